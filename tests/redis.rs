//! Several instances behave as one hub through Redis: tests against real `redis-server`
//! processes (started per test on free ports; see tests/support/redis.rs), two hubs served on
//! two ports in this process, real WebSocket clients.
#![cfg(feature = "redis")]

#[path = "support/redis.rs"]
mod redis_support;
mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;

use redis_support::{LatencyProxy, RedisServer, StarvingProxy, numsub, publish_raw};
use support::*;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tower_ws_hub::redis::deadpool_redis::{self, redis};
use tower_ws_hub::redis::{DEFAULT_OPERATION_TIMEOUT, RedisConfig};
use tower_ws_hub::{BrokerStatus, Hub, HubBuilder, Message, PublishError, SlowConsumerPolicy};

/// Probes fast enough that a test sees their effect quickly.
fn config(url: &str) -> RedisConfig {
    RedisConfig::from_url(url)
        .unwrap()
        .probe(Duration::from_millis(200), Duration::from_secs(1))
}

async fn instance(builder: HubBuilder, config: RedisConfig) -> Server {
    serve_hub(builder.redis(config).build()).await
}

/// Two instances, A and B, on the same Redis.
async fn pair(redis: &RedisServer) -> (Server, Server) {
    (
        instance(Hub::builder(), config(&redis.url())).await,
        instance(Hub::builder(), config(&redis.url())).await,
    )
}

/// Waits until `hub` is connected and subscribed to exactly `rooms` rooms (confirmed by Redis).
async fn wait_subscribed(hub: &Hub, rooms: usize) {
    eventually(
        &format!("connected and subscribed to {rooms} rooms"),
        || {
            let status = hub.broker_status();
            status.connected && status.subscribed_rooms == rooms
        },
    )
    .await;
}

/// Clients `a` on A and `b` on B in `room`, everything subscribed.
async fn one_client_each(a: &Server, b: &Server, room: &str) -> (Client, Client) {
    let ca = a.connect(room).await;
    let cb = b.connect(room).await;
    wait_members(&a.hub, room, 1).await;
    wait_members(&b.hub, room, 1).await;
    wait_subscribed(&a.hub, 1).await;
    wait_subscribed(&b.hub, 1).await;
    (ca, cb)
}

fn envelope_by_hand(kind: u8, payload: &[u8]) -> Vec<u8> {
    // Per the spec in docs/scaling-out.md, not with the library's encoder: magic 0xF7,
    // version 1, kind, 16-byte origin (zeros: an external emitter), payload.
    let mut bytes = vec![0xF7, 0x01, kind];
    bytes.extend_from_slice(&[0u8; 16]);
    bytes.extend_from_slice(payload);
    bytes
}

/// Makes `redis` answer nobody for a second (`DEBUG SLEEP 1`), from 50 ms after this returns;
/// the task ends with the stall.
async fn stall_redis_for_a_second(redis: &RedisServer) -> tokio::task::JoinHandle<()> {
    stall_redis_for(redis, 1).await
}

/// Makes Redis stop answering anyone for `seconds` (`DEBUG SLEEP`); returns once the stall is
/// under way, with the task that ends with it.
async fn stall_redis_for(redis: &RedisServer, seconds: u64) -> tokio::task::JoinHandle<()> {
    let mut plain = redis.patient_connection().await;
    let sleeper = tokio::spawn(async move {
        let _: redis::RedisResult<()> = redis::cmd("DEBUG")
            .arg("SLEEP")
            .arg(seconds)
            .query_async(&mut plain)
            .await;
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    sleeper
}

#[tokio::test]
async fn a_message_sent_on_one_instance_reaches_members_on_the_other() {
    let redis = RedisServer::start().await;
    let (a, b) = pair(&redis).await;
    let (mut ca, mut cb) = one_client_each(&a, &b, "lobby").await;

    send_text(&mut ca, "hello from A").await;
    assert_eq!(next_text(&mut cb).await, "hello from A");
    send_text(&mut cb, "hello from B").await;
    assert_eq!(next_text(&mut ca).await, "hello from B");
}

#[tokio::test]
async fn the_sender_does_not_get_its_own_message_back_through_redis() {
    let redis = RedisServer::start().await;
    let (a, b) = pair(&redis).await;
    let (mut ca, mut cb) = one_client_each(&a, &b, "lobby").await;

    send_text(&mut ca, "mine").await;
    assert_eq!(next_text(&mut cb).await, "mine");
    assert_silent(&mut ca, Duration::from_millis(300)).await;
}

#[tokio::test]
async fn every_member_on_every_instance_gets_each_message_exactly_once() {
    let redis = RedisServer::start().await;
    let (a, b) = pair(&redis).await;
    let mut sender = a.connect("r").await;
    let mut local = a.connect("r").await;
    let mut remote1 = b.connect("r").await;
    let mut remote2 = b.connect("r").await;
    wait_members(&a.hub, "r", 2).await;
    wait_members(&b.hub, "r", 2).await;
    wait_subscribed(&a.hub, 1).await;
    wait_subscribed(&b.hub, 1).await;

    for text in ["one", "two", "three"] {
        send_text(&mut sender, text).await;
    }
    for client in [&mut local, &mut remote1, &mut remote2] {
        for expected in ["one", "two", "three"] {
            assert_eq!(next_text(client).await, expected);
        }
    }
    // The application is another sender: checked after, so that the order is defined.
    a.hub
        .publish("r", Message::text("from the app"))
        .await
        .unwrap();
    for client in [&mut local, &mut remote1, &mut remote2] {
        assert_eq!(next_text(client).await, "from the app");
    }
    // Nothing trailing: no second copy from Redis on A, no duplicate on B.
    for client in [&mut local, &mut remote1, &mut remote2] {
        assert_silent(client, Duration::from_millis(300)).await;
    }
    assert_eq!(next_text(&mut sender).await, "from the app");
    assert_silent(&mut sender, Duration::from_millis(100)).await;
}

#[tokio::test]
async fn interleaved_messages_for_many_rooms_reach_each_room_in_order() {
    // Messages that arrive together on a subscriber connection are delivered in runs per room:
    // interleaving rooms (several of which share a subscriber connection) must neither mix
    // rooms up nor reorder any of them.
    const ROOMS: usize = 6;
    const PER_ROOM: usize = 100;
    let redis = RedisServer::start().await;
    let (a, b) = pair(&redis).await;
    let mut clients = Vec::new();
    for room in 0..ROOMS {
        let name = format!("mix-{room}");
        clients.push(b.connect(&name).await);
        wait_members(&b.hub, &name, 1).await;
    }
    wait_subscribed(&b.hub, ROOMS).await;

    // Room order per message: 0 1 1 2 2 2 3 ... so that runs of several lengths occur.
    let mut sent = [0usize; ROOMS];
    let mut order = Vec::new();
    while sent.iter().any(|&n| n < PER_ROOM) {
        for (room, count) in sent.iter_mut().enumerate() {
            for _ in 0..=room % 3 {
                if *count < PER_ROOM {
                    order.push((room, *count));
                    *count += 1;
                }
            }
        }
    }
    for &(room, i) in &order {
        a.hub
            .publish(&format!("mix-{room}"), Message::text(format!("{room}:{i}")))
            .await
            .unwrap();
    }
    for (room, client) in clients.iter_mut().enumerate() {
        for i in 0..PER_ROOM {
            assert_eq!(next_text(client).await, format!("{room}:{i}"));
        }
    }
    for client in &mut clients {
        assert_silent(client, Duration::from_millis(100)).await;
    }
    assert_eq!(b.hub.stats().deliveries, (ROOMS * PER_ROOM) as u64);
}

#[tokio::test]
async fn a_senders_order_is_kept_across_instances_over_ten_thousand_messages() {
    const N: usize = 10_000;
    let redis = RedisServer::start().await;
    // Bounds big enough that this test is about order, not about the (tested) overflow policies.
    let a = instance(Hub::builder(), config(&redis.url()).publish_queue(N)).await;
    let b = instance(
        Hub::builder().outbound_queue(2 * N, 64 * 1024 * 1024),
        config(&redis.url()),
    )
    .await;
    let (mut ca, mut cb) = one_client_each(&a, &b, "ordered").await;

    let sender = tokio::spawn(async move {
        for i in 0..N {
            send_text(&mut ca, &i.to_string()).await;
        }
        ca
    });
    for i in 0..N {
        assert_eq!(
            next_text(&mut cb).await,
            i.to_string(),
            "out of order at {i}"
        );
    }
    let _ca = sender.await.unwrap();
    assert_silent(&mut cb, Duration::from_millis(200)).await;
    let status = a.hub.broker_status();
    assert_eq!(
        (status.publish_failures, status.publish_dropped),
        (0, 0),
        "{status:?}"
    );
}

#[tokio::test]
async fn a_hundred_rooms_stay_isolated_across_instances() {
    const ROOMS: usize = 100;
    let redis = RedisServer::start().await;
    let (a, b) = pair(&redis).await;
    let mut senders = Vec::new();
    let mut receivers = Vec::new();
    for i in 0..ROOMS {
        senders.push(a.connect(&format!("room-{i}")).await);
        receivers.push(b.connect(&format!("room-{i}")).await);
    }
    wait_subscribed(&a.hub, ROOMS).await;
    wait_subscribed(&b.hub, ROOMS).await;

    for (i, sender) in senders.iter_mut().enumerate() {
        send_text(sender, &format!("for room-{i}")).await;
    }
    for (i, receiver) in receivers.iter_mut().enumerate() {
        assert_eq!(next_text(receiver).await, format!("for room-{i}"));
    }
    // Nothing from any other room reached anyone.
    let quiet = receivers
        .iter_mut()
        .chain(senders.iter_mut())
        .map(|client| assert_silent(client, Duration::from_millis(300)));
    futures_util::future::join_all(quiet).await;
}

#[tokio::test]
async fn an_instance_subscribes_on_the_first_local_join_and_unsubscribes_after_the_last_leave() {
    let redis = RedisServer::start().await;
    let (a, b) = pair(&redis).await;
    let mut plain = redis.connection().await;
    let channel = "tower-ws-hub:watched";
    assert_eq!(numsub(&mut plain, channel).await, 0);

    let b1 = b.connect("watched").await;
    wait_subscribed(&b.hub, 1).await;
    assert_eq!(numsub(&mut plain, channel).await, 1);

    // A second local member changes nothing; a member on A adds A's subscription.
    let b2 = b.connect("watched").await;
    let a1 = a.connect("watched").await;
    wait_members(&b.hub, "watched", 2).await;
    wait_subscribed(&a.hub, 1).await;
    assert_eq!(numsub(&mut plain, channel).await, 2);

    drop(b1);
    wait_members(&b.hub, "watched", 1).await;
    assert_eq!(b.hub.broker_status().subscribed_rooms, 1);
    drop(b2);
    wait_subscribed(&b.hub, 0).await;
    assert_eq!(numsub(&mut plain, channel).await, 1);
    drop(a1);
    wait_subscribed(&a.hub, 0).await;
    assert_eq!(numsub(&mut plain, channel).await, 0);
}

#[tokio::test]
async fn delivery_survives_a_redis_kill_and_resumes_within_two_seconds_of_its_restart() {
    let mut redis = RedisServer::start().await;
    let (a, b) = pair(&redis).await;
    let mut sender = a.connect("r").await;
    let mut local = a.connect("r").await;
    let mut remote = b.connect("r").await;
    wait_members(&a.hub, "r", 2).await;
    wait_subscribed(&a.hub, 1).await;
    wait_subscribed(&b.hub, 1).await;
    send_text(&mut sender, "before").await;
    assert_eq!(next_text(&mut local).await, "before");
    assert_eq!(next_text(&mut remote).await, "before");

    redis.kill();

    // Local delivery does not care.
    send_text(&mut sender, "during").await;
    assert_eq!(next_text(&mut local).await, "during");
    // Publishing fails fast and is counted once the broker knows (the first attempts may still
    // be queued and lost in a failed pipeline: at most once).
    let failed = tokio::time::timeout(PROMPTLY, async {
        loop {
            match a.hub.publish("nobody-here", Message::text("x")).await {
                Err(PublishError::BrokerUnavailable { .. }) => break,
                Ok(0) => tokio::time::sleep(Duration::from_millis(20)).await,
                other => panic!("unexpected {other:?}"),
            }
        }
    })
    .await;
    assert!(failed.is_ok(), "publish never reported the outage");
    let result = a.hub.publish("r", Message::text("app during")).await;
    assert!(
        matches!(result, Err(PublishError::BrokerUnavailable { .. })),
        "{result:?}"
    );
    assert_eq!(next_text(&mut local).await, "app during");
    assert!(a.hub.broker_status().publish_failures > 0);
    eventually("A reports disconnected", || {
        !a.hub.broker_status().connected
    })
    .await;

    // Everything B's client receives from now on, with when.
    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
    let reader = tokio::spawn(async move {
        loop {
            let text = next_text(&mut remote).await;
            let _ = seen_tx.send((Instant::now(), text));
        }
    });

    // A long enough outage for the reconnect backoff to reach its cap (500 ms): the worst case.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    redis.restart().await;
    let restarted = Instant::now();
    // Send numbered markers until B's client gets one: that is when cross-instance delivery is
    // back (markers sent before that are lost, by design).
    let mut k = 0u32;
    let first = loop {
        assert!(
            restarted.elapsed() < Duration::from_secs(10),
            "no cross-instance delivery 10 s after the restart"
        );
        send_text(&mut sender, &format!("after-{k}")).await;
        k += 1;
        if let Ok(Some(first)) = tokio::time::timeout(Duration::from_millis(25), seen.recv()).await
        {
            break first;
        }
    };
    let recovery = first.0.duration_since(restarted);
    eprintln!("cross-instance delivery resumed {recovery:?} after Redis restarted");
    assert!(
        recovery <= Duration::from_millis(2250),
        "recovery took {recovery:?} (limit 2 s + slack)"
    );

    // Exactly once after recovery: markers in order, no duplicate, nothing from the outage.
    send_text(&mut sender, "final").await;
    let mut received = vec![first.1];
    loop {
        let (_, text) = tokio::time::timeout(PROMPTLY, seen.recv())
            .await
            .expect("final never arrived")
            .unwrap();
        if text == "final" {
            break;
        }
        received.push(text);
    }
    let numbers: Vec<u32> = received
        .iter()
        .map(|text| {
            text.strip_prefix("after-")
                .unwrap_or_else(|| panic!("unexpected {text:?} after the outage"))
                .parse()
                .unwrap()
        })
        .collect();
    assert!(
        numbers.windows(2).all(|w| w[0] < w[1]),
        "duplicated or reordered: {numbers:?}"
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(300), seen.recv())
            .await
            .is_err(),
        "something trailed the final message"
    );
    reader.abort();
    assert!(b.hub.broker_status().reconnects >= 1);
    assert_eq!(a.hub.connection_count(), 2, "clients stayed connected");
}

/// Instances A and B on `redis`, reconnecting with `backoff_min`..`backoff_max`, a client on
/// each in room `r`, and one message from A's client received on B's: A's publisher task for
/// `r` now keeps a connection that has carried a pipeline. Returns them with when that
/// message arrived.
async fn pair_after_one_delivery(
    redis: &RedisServer,
    backoff_min: Duration,
    backoff_max: Duration,
) -> (Server, Server, Client, Client, Instant) {
    let config = || config(&redis.url()).reconnect_backoff(backoff_min, backoff_max);
    let a = instance(Hub::builder(), config()).await;
    let b = instance(Hub::builder(), config()).await;
    let (mut sender, mut remote) = one_client_each(&a, &b, "r").await;
    send_text(&mut sender, "before").await;
    assert_eq!(next_text(&mut remote).await, "before");
    (a, b, sender, remote, Instant::now())
}

/// A Redis restart quicker than a publisher's idle release (it keeps its connection 1 s after
/// its last batch), with nothing published meanwhile: the connection it kept is dead. Once the
/// hub says it is connected again, the next message must not be sent on that connection and
/// lost (counted in `publish_failures`).
#[tokio::test]
async fn the_first_message_after_a_quick_redis_restart_is_not_lost() {
    // The test needs the restart done well within the publisher's 1 s idle release; on a
    // machine too busy for that just then, it starts over (a few times) rather than fail.
    for attempt in 1..=PREMISE_ATTEMPTS {
        let mut redis = RedisServer::start().await;
        // Reconnecting at once, so that the restart is over well within the idle release even
        // on a loaded machine (the default backoff alone can take 750 ms).
        let (a, b, sender, remote, last_batch) =
            pair_after_one_delivery(&redis, Duration::from_millis(10), Duration::from_millis(20))
                .await;
        redis.kill();
        eventually("A sees Redis gone", || !a.hub.broker_status().connected).await;
        redis.restart().await;
        wait_subscribed(&a.hub, 1).await;
        wait_subscribed(&b.hub, 1).await;
        let took = last_batch.elapsed();
        if took < Duration::from_millis(800) {
            return first_message_after_the_restart_arrives(a, sender, remote).await;
        }
        eprintln!("attempt {attempt}: the restart took {took:?}, past 800 ms; starting over");
        abandon(a, b, sender, remote).await;
    }
    panic!("the restart never came within 800 ms of the last batch in {PREMISE_ATTEMPTS} tries");
}

/// Tries at a test whose premise is a timing the machine may miss when busy.
const PREMISE_ATTEMPTS: usize = 3;

/// Ends an attempt that missed its premise: its clients hang up and both hubs shut down, so
/// that nothing of it (reconnect loops, servers) loads the machine during the next attempt.
async fn abandon(a: Server, b: Server, sender: Client, remote: Client) {
    drop((sender, remote));
    a.hub.shutdown().await;
    b.hub.shutdown().await;
}

/// The rest of `the_first_message_after_a_quick_redis_restart_is_not_lost`, once its premise
/// held: A's publisher still holds the connection it had before the restart.
async fn first_message_after_the_restart_arrives(
    a: Server,
    mut sender: Client,
    mut remote: Client,
) {
    let status = a.hub.broker_status();
    assert!(status.publisher_connected, "{status:?}");

    send_text(&mut sender, "after").await;
    assert_eq!(next_text(&mut remote).await, "after");
    let after = a.hub.broker_status();
    assert_eq!(after.publish_failures, status.publish_failures, "{after:?}");
    assert!(after.publisher_connected, "{after:?}");
}

/// A publisher connection that breaks while Redis itself is fine (here `CLIENT KILL TYPE
/// normal`, which leaves the subscriber connections alone, as a proxy or a failover might):
/// the pipeline sent on it fails and is counted (never retried: Redis may have run part of
/// it), but the publisher goes on at once on a fresh connection instead of counting as down
/// and refusing what comes next for a reconnect backoff (2 s here, so that the difference
/// cannot hide in the timing).
#[tokio::test]
async fn a_broken_publisher_connection_costs_one_pipeline_not_a_backoff() {
    // The next message must be sent well within the publisher's 1 s idle release (after it,
    // the connection goes back to the pool, whose PING weeds it out); on a machine too busy
    // for that just then, the test starts over rather than fail.
    for attempt in 1..=PREMISE_ATTEMPTS {
        let redis = RedisServer::start().await;
        let (a, b, sender, remote, last_batch) =
            pair_after_one_delivery(&redis, Duration::from_secs(2), Duration::from_secs(2)).await;
        let mut plain = redis.patient_connection().await;
        let killed: i64 = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("TYPE")
            .arg("normal")
            .query_async(&mut plain)
            .await
            .unwrap();
        assert!(killed >= 1, "no publisher connection to kill");
        let took = last_batch.elapsed();
        if took < Duration::from_millis(800) {
            return one_pipeline_lost_then_through(a, b, sender, remote).await;
        }
        eprintln!("attempt {attempt}: {took:?} since the last batch, past 800 ms; starting over");
        abandon(a, b, sender, remote).await;
    }
    panic!("never within 800 ms of the last batch in {PREMISE_ATTEMPTS} tries");
}

/// The rest of `a_broken_publisher_connection_costs_one_pipeline_not_a_backoff`, once its
/// premise held: the next message goes out on the connection Redis just killed.
async fn one_pipeline_lost_then_through(
    a: Server,
    _b: Server,
    mut sender: Client,
    mut remote: Client,
) {
    let reconnects = a.hub.broker_status().reconnects;

    // Sent on the dead connection: lost, counted.
    send_text(&mut sender, "on the dead one").await;
    eventually("the broken pipeline counted", || {
        a.hub.broker_status().publish_failures == 1
    })
    .await;
    // The next one goes through, well within the 2 s backoff.
    send_text(&mut sender, "after").await;
    assert_eq!(next_text(&mut remote).await, "after");
    let status = a.hub.broker_status();
    assert_eq!(status.publish_failures, 1, "{status:?}");
    assert!(status.publisher_connected, "{status:?}");
    assert_eq!(
        status.reconnects, reconnects,
        "subscribers untouched: {status:?}"
    );
}

/// `RedisConfig::from_url`'s pool holds what the hub's publisher tasks and probes use at once,
/// however many CPUs the machine has: deadpool's own default (twice the CPU count) left every
/// publisher task past it without a connection under load (here: more tasks than that, all
/// kept busy for longer than their idle release), their rooms' messages failing as if Redis
/// were down.
#[tokio::test]
async fn more_publisher_tasks_than_cpus_all_get_a_connection_from_from_urls_pool() {
    let redis = RedisServer::start().await;
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    let tasks = 2 * cpus + 2;
    let config = || config(&redis.url()).publisher_tasks(tasks);
    let a = instance(Hub::builder(), config()).await;
    let b = instance(Hub::builder(), config()).await;
    eventually("A's publisher tasks up", || {
        a.hub.broker_status().publisher_connected
    })
    .await;
    // Enough rooms that every publisher task owns some (rooms are spread by hash).
    let rooms: Vec<String> = (0..16 * tasks).map(|i| format!("room-{i}")).collect();
    let mut members = Vec::new();
    for room in &rooms {
        members.push(b.connect(room).await);
    }
    wait_subscribed(&b.hub, rooms.len()).await;
    // Every task busy for 1.5 s, past the 1 s after which an idle one gives its connection
    // back: each keeps the one it got, and one left without waits the 1 s operation timeout
    // and counts as down. The probes (every 200 ms here) need a connection of their own.
    let started = Instant::now();
    let mut sent = 0u64;
    while started.elapsed() < Duration::from_millis(1500) {
        for room in &rooms {
            a.hub
                .publish(room, Message::text("m"))
                .await
                .expect("published");
            sent += 1;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    eventually("everything published", || {
        a.hub.broker_status().published == sent
    })
    .await;
    let status = a.hub.broker_status();
    assert_eq!(status.publish_failures, 0, "{status:?}");
    assert!(status.publisher_connected, "{status:?}");
    // A probe that finds no connection in the pool is only recorded here.
    assert_eq!(status.last_error, None, "{status:?}");
    drop(members);
}

/// One publisher task with a queue of `queue` messages, giving up on a Redis operation after
/// `operation`, and probes every 200 ms that give up after `probe`.
fn one_publisher(url: &str, queue: usize, operation: Duration, probe: Duration) -> RedisConfig {
    RedisConfig::from_url(url)
        .unwrap()
        .probe(Duration::from_millis(200), probe)
        .operation_timeout(operation)
        .publisher_tasks(1)
        .publish_queue(queue)
}

/// An in-process hub (no server) publishing through `redis` with [`one_publisher`]'s config
/// (probes that outlast any stall here), once its publisher is connected.
async fn hub_with_one_publisher(redis: &RedisServer, queue: usize, operation: Duration) -> Hub {
    let config = one_publisher(&redis.url(), queue, operation, Duration::from_secs(10));
    let hub = Hub::builder().redis(config).build();
    eventually("publisher up", || hub.broker_status().publisher_connected).await;
    hub
}

/// `(published, publish_failures, publish_dropped)`: where each message the broker was handed
/// ended up.
fn outcomes(status: &BrokerStatus) -> (u64, u64, u64) {
    (
        status.published,
        status.publish_failures,
        status.publish_dropped,
    )
}

/// A config whose operations and probes outlast `stall` (so a stall that long is a slow
/// Redis, not a dead one), with one publisher task and a publish queue of 4.
fn patient(url: &str, stall: Duration) -> RedisConfig {
    one_publisher(url, 4, stall * 5, stall * 5)
}

/// Like [`stall_redis_for`], but returns only once Redis is seen not answering (a PING on
/// another connection gets no reply within 20 ms).
async fn stall_redis_confirmed(redis: &RedisServer, seconds: u64) -> tokio::task::JoinHandle<()> {
    let mut probe = redis.connection().await;
    let sleeper = stall_redis_for(redis, seconds).await;
    loop {
        let ping = redis::cmd("PING");
        let ping = ping.query_async::<String>(&mut probe);
        if tokio::time::timeout(Duration::from_millis(20), ping)
            .await
            .is_err()
        {
            return sleeper;
        }
        assert!(!sleeper.is_finished(), "the stall never started");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn publish_with_backpressure_waits_for_a_slow_redis_and_every_instance_gets_everything() {
    const N: usize = 50;
    // Long enough for the checks made during it on a busy machine (a quarter of it asleep,
    // then the local reads).
    let stall = Duration::from_secs(2);
    let redis = RedisServer::start().await;
    let a = instance(Hub::builder(), patient(&redis.url(), stall)).await;
    let b = instance(Hub::builder(), patient(&redis.url(), stall)).await;
    let (mut local, mut remote) = one_client_each(&a, &b, "r").await;
    wait_subscribed(&a.hub, 1).await;
    wait_subscribed(&b.hub, 1).await;

    let sleeper = stall_redis_confirmed(&redis, stall.as_secs()).await;
    let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let publisher = tokio::spawn({
        let hub = a.hub.clone();
        let done = Arc::clone(&done);
        async move {
            for i in 0..N {
                hub.publish_with_backpressure("r", Message::text(i.to_string()))
                    .await
                    .unwrap_or_else(|error| panic!("message {i}: {error}"));
                done.fetch_add(1, Ordering::SeqCst);
            }
        }
    });
    // Redis is asleep: one pipeline is out, the queue holds what waiting publishes may fill,
    // and the next call waits for room.
    tokio::time::sleep(stall / 4).await;
    let early = done.load(Ordering::SeqCst);
    assert!(
        early < N,
        "all {N} publishes returned while Redis slept and the queue holds 4: nothing waited"
    );
    // Local delivery did not wait for Redis: every call that returned, and the one waiting
    // now (`early`), already delivered here.
    for i in 0..=early {
        let text = tokio::time::timeout(stall / 4, next_text(&mut local))
            .await
            .unwrap_or_else(|_| {
                panic!("message {i} (call {early} waiting) not delivered locally during the stall")
            });
        assert_eq!(text, i.to_string());
    }
    assert!(!sleeper.is_finished(), "Redis woke before the check");
    assert_eq!(
        done.load(Ordering::SeqCst),
        early,
        "the call was still waiting"
    );
    publisher.await.unwrap();
    sleeper.await.unwrap();

    for i in early + 1..N {
        assert_eq!(next_text(&mut local).await, i.to_string());
    }
    for i in 0..N {
        assert_eq!(next_text(&mut remote).await, i.to_string(), "on B");
    }
    assert_silent(&mut remote, Duration::from_millis(200)).await;
    assert_nothing_refused(&a.hub);
}

#[tokio::test]
async fn publish_with_backpressure_refuses_what_waits_when_redis_stops_answering() {
    let redis = RedisServer::start().await;
    // Redis sleeps 3 s; the publisher gives up on it after 1.5 s.
    let config = one_publisher(
        &redis.url(),
        4,
        Duration::from_millis(1500),
        Duration::from_secs(1),
    );
    let a = instance(Hub::builder(), config).await;
    let mut local = a.connect("r").await;
    wait_subscribed(&a.hub, 1).await;
    let published_before = a.hub.broker_status().published;

    let sleeper = stall_redis_confirmed(&redis, 3).await;
    let publish = |i: usize| {
        let hub = a.hub.clone();
        tokio::spawn(async move {
            hub.publish_with_backpressure("r", Message::text(i.to_string()))
                .await
        })
    };
    // Publish one at a time until one waits: the pipeline sent and the queue are full.
    let mut accepted = 0;
    let first_waiter = loop {
        let mut task = publish(accepted);
        match tokio::time::timeout(Duration::from_millis(300), &mut task).await {
            Ok(result) => result.unwrap().expect("room in the queue: accepted"),
            Err(_) => break task,
        };
        accepted += 1;
        assert!(accepted < 100, "no publish ever waited");
    };
    let mut waiters = vec![first_waiter];
    waiters.extend((1..10).map(|k| publish(accepted + k)));
    tokio::task::yield_now().await;
    assert!(
        a.hub.broker_status().publisher_connected,
        "the waiters must start waiting while the publisher is up, or this tests nothing"
    );

    // The publisher times out, fails its queue (making room) and goes down: every waiter is
    // refused rather than accepted into a queue that is failed.
    for (k, waiter) in waiters.into_iter().enumerate() {
        let result = tokio::time::timeout(Duration::from_secs(10), waiter)
            .await
            .unwrap_or_else(|_| panic!("waiter {k} still waiting 10 s later"))
            .unwrap();
        assert!(
            matches!(
                result,
                Err(PublishError::BrokerUnavailable {
                    delivered_locally: 1,
                    ..
                })
            ),
            "waiter {k}: {result:?}"
        );
    }
    // Every message reached the local member, accepted or refused by the broker.
    let mut got = Vec::new();
    for _ in 0..accepted + 10 {
        got.push(next_text(&mut local).await.parse::<usize>().unwrap());
    }
    got.sort_unstable();
    assert_eq!(got, (0..accepted + 10).collect::<Vec<_>>());
    // Each counted once: the accepted ones failed with their pipeline or the queue, the
    // waiters refused.
    let status = a.hub.broker_status();
    assert_eq!(
        (
            status.published - published_before,
            status.publish_failures,
            status.publish_dropped
        ),
        (0, accepted as u64 + 10, 0),
        "{status:?}"
    );
    sleeper.await.unwrap();

    // Redis is back: so is publishing, without anyone reconnecting.
    eventually("publishing is back", || {
        a.hub.broker_status().publisher_connected
    })
    .await;
    assert_eq!(
        a.hub
            .publish_with_backpressure("r", Message::text("after"))
            .await
            .unwrap(),
        1
    );
}

#[tokio::test]
async fn a_bulk_publisher_waiting_for_room_leaves_room_for_clients_messages() {
    const CHAT: u32 = 200;
    let redis = RedisServer::start().await;
    // Every round trip 5 ms slower: Redis slower than a bulk publisher.
    let proxy = LatencyProxy::start(redis.addr(), Duration::from_millis(5)).await;
    let slow = one_publisher(
        &proxy.url(),
        256,
        DEFAULT_OPERATION_TIMEOUT,
        Duration::from_secs(5),
    );
    let a = instance(Hub::builder(), slow).await;
    let b = instance(Hub::builder(), config(&redis.url())).await;
    let (mut sender, mut receiver) = one_client_each(&a, &b, "chat").await;
    wait_subscribed(&a.hub, 1).await;
    wait_subscribed(&b.hub, 1).await;

    // A bulk publisher keeps the queue full ("feed" and "chat" share the one publisher task).
    let stop = Arc::new(AtomicBool::new(false));
    let bulk = tokio::spawn({
        let hub = a.hub.clone();
        let stop = Arc::clone(&stop);
        async move {
            let mut sent = 0u64;
            while !stop.load(Ordering::Relaxed) {
                hub.publish_with_backpressure("feed", Message::text("x"))
                    .await
                    .unwrap();
                sent += 1;
            }
            sent
        }
    });
    eventually("the bulk publisher is waiting for room", || {
        a.hub.broker_status().published > 300
    })
    .await;
    // A client chats meanwhile: its messages go through the same queue, never waiting (were
    // the bulk publisher's waits allowed to fill the queue, its reads would pause, at each
    // batch, and its messages still arrive).
    let paused_before = a.hub.broker_status().client_reads_paused;
    for i in 0..CHAT {
        send_text(&mut sender, &i.to_string()).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for i in 0..CHAT {
        assert_eq!(next_text(&mut receiver).await, i.to_string(), "on B");
    }
    stop.store(true, Ordering::Relaxed);
    let bulk_sent = bulk.await.unwrap();
    let status = a.hub.broker_status();
    assert_eq!(status.publish_dropped, 0, "{status:?}");
    assert_eq!(status.client_reads_paused, paused_before, "{status:?}");
    assert!(
        bulk_sent > 300,
        "the bulk publisher made progress: {bulk_sent}"
    );
}

/// Reads what `client` receives until it is silent for 200 ms.
async fn drain_texts(client: &mut Client) -> Vec<String> {
    let mut got = Vec::new();
    while let Ok(Some(message)) =
        tokio::time::timeout(Duration::from_millis(200), client.next()).await
    {
        match message.unwrap() {
            WsMessage::Text(text) => got.push(text.to_string()),
            WsMessage::Ping(_) | WsMessage::Pong(_) => {}
            other => panic!("expected text, got {other:?}"),
        }
    }
    got
}

/// Asserts `hub`'s broker refused and failed nothing; returns its status.
fn assert_nothing_refused(hub: &Hub) -> tower_ws_hub::BrokerStatus {
    let status = hub.broker_status();
    assert_eq!(
        (status.publish_dropped, status.publish_failures),
        (0, 0),
        "{status:?}"
    );
    status
}

fn numbered(range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| i.to_string()).collect()
}

#[tokio::test]
async fn a_client_sending_faster_than_redis_takes_is_read_slower_and_nothing_is_dropped() {
    const N: usize = 300;
    let stall = Duration::from_secs(1);
    let redis = RedisServer::start().await;
    // A publish queue of 4, and a Redis operation may take 5 s: a stall of 1 s is slowness.
    let a = instance(Hub::builder(), patient(&redis.url(), stall)).await;
    let b = instance(Hub::builder(), config(&redis.url())).await;
    let (mut sender, mut remote) = one_client_each(&a, &b, "r").await;
    let mut local = a.connect("r").await;
    wait_members(&a.hub, "r", 2).await;

    let sleeper = stall_redis_confirmed(&redis, 1).await;
    for i in 0..N {
        send_text(&mut sender, &i.to_string()).await;
    }
    // While Redis sleeps, the sender's messages wait in its socket: the local member gets no
    // more than what fits in the queue (and the pipeline out) before reading stops.
    let early = drain_texts(&mut local).await;
    assert!(!sleeper.is_finished(), "Redis woke before the check");
    assert!(
        early.len() < N / 2,
        "{} of {N} messages were read while Redis slept and the queue holds 4",
        early.len()
    );
    assert_eq!(early, numbered(0..early.len()));
    assert!(a.hub.broker_status().client_reads_paused >= 1);
    sleeper.await.unwrap();

    // Redis is back: every message is read and reaches both instances, in order.
    for i in early.len()..N {
        assert_eq!(next_text(&mut local).await, i.to_string(), "on A");
    }
    for i in 0..N {
        assert_eq!(next_text(&mut remote).await, i.to_string(), "on B");
    }
    assert_silent(&mut remote, Duration::from_millis(200)).await;
    assert_nothing_refused(&a.hub);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_racing_for_the_last_places_in_the_queue_lose_nothing() {
    const SENDERS: usize = 16;
    const N: usize = 100;
    let stall = Duration::from_secs(1);
    let redis = RedisServer::start().await;
    let a = instance(Hub::builder(), patient(&redis.url(), stall)).await;
    let b = instance(Hub::builder(), config(&redis.url())).await;
    let mut remote = b.connect("r").await;
    let mut senders = Vec::new();
    for _ in 0..SENDERS {
        senders.push(a.connect("r").await);
    }
    wait_members(&a.hub, "r", SENDERS).await;
    wait_members(&b.hub, "r", 1).await;
    wait_subscribed(&a.hub, 1).await;
    wait_subscribed(&b.hub, 1).await;

    // Every sender's messages are waiting in its socket when Redis wakes: on two worker
    // threads, the woken connections race for the queue's 4 places.
    let sleeper = stall_redis_confirmed(&redis, 1).await;
    let sending: Vec<_> = senders
        .into_iter()
        .enumerate()
        .map(|(s, mut sender)| {
            tokio::spawn(async move {
                for i in 0..N {
                    send_text(&mut sender, &format!("{s}:{i}")).await;
                }
                sender
            })
        })
        .collect();
    let mut senders = Vec::new();
    for task in sending {
        senders.push(task.await.unwrap());
    }
    sleeper.await.unwrap();

    let mut next = [0usize; SENDERS];
    for _ in 0..SENDERS * N {
        let text = next_text(&mut remote).await;
        let (s, i) = text.split_once(':').unwrap();
        let s: usize = s.parse().unwrap();
        assert_eq!(
            i.parse::<usize>().unwrap(),
            next[s],
            "sender {s}'s order on B"
        );
        next[s] += 1;
    }
    let status = assert_nothing_refused(&a.hub);
    assert!(status.client_reads_paused >= 1, "{status:?}");
    drop(senders);
}

/// CPU time this thread has used (user and system), from `/proc/thread-self/stat`. A
/// `#[tokio::test]` runs the hub's tasks on its own thread: this counts them, and not the
/// tests running beside it in the same process.
fn thread_cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // USER_HZ is 100 on Linux.
    Duration::from_millis(ticks * 10)
}

/// An instance with one publisher task, a publish queue of `queue`, and operations that may
/// take 10 s, whose message hook publishes twice to room "other" for every client message:
/// between a connection's look at the queue's room and its hand-over, places are taken, so the
/// connection is left holding messages the queue cannot take yet.
async fn instance_stealing_places(redis: &RedisServer, queue: usize) -> Server {
    use futures_util::FutureExt;
    let hub_cell: Arc<std::sync::OnceLock<Hub>> = Arc::default();
    let hook_hub = Arc::clone(&hub_cell);
    let builder = Hub::builder().on_message(move |_, message| {
        if let Some(hub) = hook_hub.get() {
            for _ in 0..2 {
                let _ = hub.publish("other", "x").now_or_never();
            }
        }
        tower_ws_hub::InboundAction::Forward(message)
    });
    let patient = one_publisher(
        &redis.url(),
        queue,
        Duration::from_secs(10),
        Duration::from_secs(10),
    );
    let server = instance(builder, patient).await;
    hub_cell.set(server.hub.clone()).ok();
    server
}

#[tokio::test]
async fn a_connection_holding_a_full_budget_of_messages_for_a_full_queue_waits_without_spinning() {
    let redis = RedisServer::start().await;
    let a = instance_stealing_places(&redis, 128).await;
    let mut sender = a.connect("r").await;
    let _local = a.connect("r").await;
    wait_members(&a.hub, "r", 2).await;
    wait_subscribed(&a.hub, 1).await;

    // Long enough for 2000 sends, the wait for them to be read and the 1.5 s measured, on a
    // busy machine.
    let sleeper = stall_redis_confirmed(&redis, 5).await;
    for i in 0..2000 {
        send_text(&mut sender, &i.to_string()).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Parked until Redis wakes: next to no CPU (a task that wakes itself in a loop burns a
    // whole core, 1.5 s here).
    let before = thread_cpu_time();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let used = thread_cpu_time() - before;
    assert!(!sleeper.is_finished(), "Redis woke before the check");
    let status = a.hub.broker_status();
    assert!(status.client_reads_paused >= 1, "{status:?}");
    assert!(
        used < Duration::from_millis(500),
        "the hub's thread used {used:?} of CPU in 1.5 s while its one client waited for room"
    );
    sleeper.await.unwrap();
}

#[tokio::test]
async fn messages_read_before_a_connection_ends_wait_for_room_and_reach_the_other_instances() {
    let redis = RedisServer::start().await;
    let a = instance_stealing_places(&redis, 16).await;
    let b = instance(Hub::builder(), config(&redis.url())).await;
    let (mut sender, mut remote) = one_client_each(&a, &b, "r").await;
    let mut local = a.connect("r").await;
    wait_members(&a.hub, "r", 2).await;

    let sleeper = stall_redis_confirmed(&redis, 2).await;
    for i in 0..300 {
        send_text(&mut sender, &i.to_string()).await;
    }
    // What the connection read reached the local member at once; some of it waits for places
    // in the queue, the rest of the client's messages wait in its socket.
    let read = drain_texts(&mut local).await;
    assert!(!read.is_empty() && read.len() < 300, "{} read", read.len());
    assert_eq!(read, numbered(0..read.len()));
    // The client vanishes (a reset), and the connection ends at its next write.
    match sender.get_mut() {
        tokio_tungstenite::MaybeTlsStream::Plain(tcp) => tcp.set_zero_linger().unwrap(),
        _ => unreachable!(),
    }
    drop(sender);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let _ = a.hub.publish("r", "poke").await;
    wait_members(&a.hub, "r", 1).await;
    assert!(
        !sleeper.is_finished(),
        "Redis woke before the connection ended"
    );
    sleeper.await.unwrap();

    // Everything it read reaches B, in order, once Redis takes it ("poke" may be refused for
    // the full queue, or come in between: it is not the client's).
    let mut on_b = Vec::new();
    while on_b.len() < read.len() {
        let text = next_text(&mut remote).await;
        if text != "poke" {
            on_b.push(text);
        }
    }
    assert_eq!(on_b, read);
    let status = a.hub.broker_status();
    assert_eq!(status.publish_failures, 0, "{status:?}");
}

#[test]
fn messages_a_connection_leaves_for_a_full_queue_are_counted_when_the_runtime_goes_away() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (redis, hub, sleeper, clients, before) = runtime.block_on(async {
        let redis = RedisServer::start().await;
        let a = instance_stealing_places(&redis, 16).await;
        // The connection read some, delivered them locally, and holds what the full queue
        // could not take.
        let (sleeper, clients, _) = sent_during_a_stall(&a, &redis).await;
        let before = a.hub.broker_status();
        (redis, a.hub.clone(), sleeper, clients, before)
    });
    // The application ends without `Hub::shutdown`: the runtime drops every task, the
    // connection's among them, while Redis still sleeps.
    drop(runtime);
    drop((sleeper, clients));
    let after = hub.broker_status();
    assert!(
        after.publish_dropped + after.publish_failures
            > before.publish_dropped + before.publish_failures,
        "what the connection held was lost without being counted: {before:?} then {after:?}"
    );
    drop(redis);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_and_messages_waiting_for_room_keep_their_order() {
    const N: usize = 600;
    let stall = Duration::from_secs(1);
    let redis = RedisServer::start().await;
    // Every 7th message is answered to its sender only; the rest go to the room.
    let builder = Hub::builder().on_message(|_, message| {
        let n: usize = message.as_text().unwrap().parse().unwrap();
        if n.is_multiple_of(7) {
            tower_ws_hub::InboundAction::Reply(message)
        } else {
            tower_ws_hub::InboundAction::Forward(message)
        }
    });
    let a = instance(builder, patient(&redis.url(), stall)).await;
    let b = instance(Hub::builder(), config(&redis.url())).await;
    let (mut sender, mut remote) = one_client_each(&a, &b, "r").await;
    let mut local = a.connect("r").await;
    wait_members(&a.hub, "r", 2).await;

    let sleeper = stall_redis_confirmed(&redis, 1).await;
    for i in 0..N {
        send_text(&mut sender, &i.to_string()).await;
    }
    sleeper.await.unwrap();

    let forwarded: Vec<String> = (0..N)
        .filter(|n| n % 7 != 0)
        .map(|n| n.to_string())
        .collect();
    let replied: Vec<String> = (0..N)
        .filter(|n| n % 7 == 0)
        .map(|n| n.to_string())
        .collect();
    assert_eq!(drain_texts(&mut local).await, forwarded, "on A");
    assert_eq!(drain_texts(&mut remote).await, forwarded, "on B");
    assert_eq!(drain_texts(&mut sender).await, replied, "to the sender");
    let status = assert_nothing_refused(&a.hub);
    assert!(status.client_reads_paused >= 1, "{status:?}");
}

#[tokio::test]
async fn a_client_whose_reads_wait_for_room_is_not_closed_for_a_pong_or_idleness_it_cannot_show() {
    use futures_util::{SinkExt, StreamExt};
    const N: usize = 300;
    let stall = Duration::from_secs(1);
    let redis = RedisServer::start().await;
    // Pings every 100 ms, 200 ms to answer, idle after 300 ms: all shorter than the stall.
    let strict = Hub::builder()
        .ping_interval(Some(Duration::from_millis(100)))
        .pong_timeout(Duration::from_millis(200))
        .idle_timeout(Some(Duration::from_millis(300)));
    let a = instance(strict, patient(&redis.url(), stall)).await;
    let b = instance(Hub::builder(), config(&redis.url())).await;
    let (sender, mut remote) = one_client_each(&a, &b, "r").await;
    // The client answers every ping (reading is what makes tungstenite send the pong).
    let (mut sink, stream) = sender.split();
    let reader = answer_pings(stream);

    let sleeper = stall_redis_confirmed(&redis, 1).await;
    for i in 0..N {
        sink.send(WsMessage::text(i.to_string())).await.unwrap();
    }
    // Its pongs (and its messages) wait behind what the connection cannot read before Redis
    // takes the queue: not the client's fault.
    sleeper.await.unwrap();
    for i in 0..N {
        assert_eq!(next_text(&mut remote).await, i.to_string(), "on B");
    }
    let stats = a.hub.stats();
    assert_eq!(
        (stats.pong_timeouts, stats.idle_timeouts),
        (0, 0),
        "{stats:?}"
    );
    assert!(a.hub.broker_status().client_reads_paused >= 1);
    assert!(!reader.is_finished(), "closed: {:?}", reader.await);
    reader.abort();
}

/// The pong for a ping the hub sent while Redis stalled sits behind everything the client
/// sent before it, which the hub could not read during the stall. Once Redis is back the hub
/// reads that backlog a read budget (64 frames) at a time, between waits for room; the pong
/// verdict must not land on a poll that merely follows a spent read budget while the backlog
/// is still being read: not 100 ms after the wait ended (the first version), nor one pong
/// timeout after it (the second, which closed the client whenever reading the backlog took
/// longer than that: on a loaded machine, or with a short timeout). The backlog here takes
/// about twice the pong timeout to read on an idle machine, and is read in full without a
/// pong timeout however long that takes (up to the stall's length again).
#[tokio::test]
async fn a_pong_behind_a_backlog_left_by_a_stall_is_not_judged_before_it_is_read() {
    use futures_util::{SinkExt, StreamExt};
    const N: usize = 40_000;
    let redis = RedisServer::start().await;
    let strict = Hub::builder()
        .ping_interval(Some(Duration::from_millis(100)))
        .pong_timeout(Duration::from_millis(250));
    // A publish queue of 4096 taken 4096 at a time: after the stall, reading goes on a budget
    // at a time for most of each wait's worth.
    let stall = Duration::from_secs(4);
    let publisher = one_publisher(&redis.url(), 4096, stall * 5, stall * 5).max_pipeline(4096);
    let a = instance(strict, publisher).await;
    let sender = a.connect("r").await;
    wait_members(&a.hub, "r", 1).await;
    wait_subscribed(&a.hub, 1).await;
    let (mut sink, stream) = sender.split();
    // The client answers every ping at once (reading is what makes tungstenite send the pong).
    let reader = answer_pings(stream);

    // A burst sent while Redis sleeps: every pong the client sends from then on is behind it.
    let sleeper = stall_redis_confirmed(&redis, stall.as_secs()).await;
    for i in 0..N {
        sink.feed(WsMessage::text(i.to_string())).await.unwrap();
    }
    sink.flush().await.unwrap();
    // All of it waits in the sockets' buffers: the client is done sending (a client still
    // sending when Redis wakes would be one that sends faster than it is read).
    assert!(!sleeper.is_finished(), "the burst outlasted the stall");
    sleeper.await.unwrap();
    let woke = Instant::now();
    eventually("the backlog read, or a pong timeout", || {
        let stats = a.hub.stats();
        stats.messages_received >= N as u64 || stats.pong_timeouts > 0
    })
    .await;
    let read_in = woke.elapsed();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stats = a.hub.stats();
    assert_eq!(
        stats.pong_timeouts, 0,
        "closed {read_in:?} after Redis woke, {} of {N} messages read",
        stats.messages_received
    );
    assert!(!reader.is_finished(), "closed: {:?}", reader.await);
    reader.abort();
}

/// What waits on the broker earn a client (time to have the backlog they left read) is
/// bounded by how long they lasted: a client whose reading waited through a stall and which
/// then floods pings and never reads (so never answers the hub's) is closed for its pong
/// timeout a little after the stall's length again, not kept open for as long as it floods.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_flooding_pings_after_a_stall_does_not_escape_the_pong_timeout() {
    use support::raw::{
        MASK, Upgrade, encode_frame, opcode, ping_flood, tcp_with_small_receive_buffer,
    };
    let redis = RedisServer::start().await;
    let strict = Hub::builder()
        .ping_interval(Some(Duration::from_millis(100)))
        .pong_timeout(Duration::from_millis(250))
        .close_timeout(Duration::from_millis(300));
    let stall = Duration::from_secs(1);
    let a = instance(
        strict,
        one_publisher(&redis.url(), 16, stall * 5, stall * 5),
    )
    .await;
    let socket = tcp_with_small_receive_buffer(a.addr).await;
    let mut flooder = Upgrade::new("/ws/r").open_on(socket).await;
    wait_members(&a.hub, "r", 1).await;
    wait_subscribed(&a.hub, 1).await;

    // More messages than the publish queue takes while Redis sleeps: reading the client waits
    // for the whole stall. Then pings, faster than they are read, for as long as it is open.
    let sleeper = stall_redis_confirmed(&redis, stall.as_secs()).await;
    let messages: Vec<u8> = (0..100)
        .flat_map(|i: u32| {
            encode_frame(true, 0, opcode::TEXT, Some(MASK), i.to_string().as_bytes())
        })
        .collect();
    let pings = ping_flood();
    let flood = tokio::spawn(async move {
        if flooder.try_send_bytes(&messages).await {
            while flooder.try_send_bytes(&pings).await {}
        }
    });
    eventually("the hub reading the client waits on Redis", || {
        a.hub.broker_status().client_reads_paused >= 1
    })
    .await;
    sleeper.await.unwrap();
    // Closed about the stall's length again, the pong timeout and the close timeout after
    // Redis woke (one that escaped would stay open for as long as it floods: `wait_members`
    // gives up after 10 s).
    wait_members(&a.hub, "r", 0).await;
    assert_eq!(a.hub.stats().pong_timeouts, 1, "{:?}", a.hub.stats());
    flood.abort();
}

#[tokio::test]
async fn without_client_backpressure_a_full_queue_refuses_a_clients_messages_and_local_members_get_them_at_once()
 {
    const N: usize = 300;
    let stall = Duration::from_secs(1);
    let redis = RedisServer::start().await;
    let eager = patient(&redis.url(), stall).client_backpressure(false);
    let a = instance(Hub::builder(), eager).await;
    let b = instance(Hub::builder(), config(&redis.url())).await;
    let (mut sender, mut remote) = one_client_each(&a, &b, "r").await;
    let mut local = a.connect("r").await;
    wait_members(&a.hub, "r", 2).await;

    let sleeper = stall_redis_confirmed(&redis, 1).await;
    for i in 0..N {
        send_text(&mut sender, &i.to_string()).await;
    }
    // Read at full speed: the local member gets everything while Redis sleeps.
    for i in 0..N {
        assert_eq!(next_text(&mut local).await, i.to_string(), "on A");
    }
    assert!(!sleeper.is_finished(), "Redis woke before the check");
    sleeper.await.unwrap();

    // What the queue could not take never reaches B, and is counted.
    let status = a.hub.broker_status();
    assert_eq!(status.client_reads_paused, 0, "{status:?}");
    let dropped = usize::try_from(status.publish_dropped).unwrap();
    assert!(dropped > 0, "{status:?}");
    let on_b = drain_texts(&mut remote).await;
    assert_eq!(on_b.len(), N - dropped, "{status:?}");
    let numbers: Vec<usize> = on_b.iter().map(|text| text.parse().unwrap()).collect();
    assert!(numbers.is_sorted(), "B got them in order: {numbers:?}");
}

#[tokio::test]
async fn a_client_waiting_for_room_is_read_again_when_redis_stops_answering() {
    const N: usize = 100;
    let redis = RedisServer::start().await;
    // Redis sleeps 3 s; the publisher gives up on it after 500 ms and goes down.
    let config = one_publisher(
        &redis.url(),
        4,
        Duration::from_millis(500),
        Duration::from_secs(5),
    );
    let a = instance(Hub::builder(), config).await;
    let mut sender = a.connect("r").await;
    let mut local = a.connect("r").await;
    wait_members(&a.hub, "r", 2).await;
    wait_subscribed(&a.hub, 1).await;

    let sleeper = stall_redis_confirmed(&redis, 3).await;
    for i in 0..N {
        send_text(&mut sender, &i.to_string()).await;
    }
    // Once publishing is down, a full queue holds nobody back: the local member gets
    // everything while Redis still sleeps.
    for i in 0..N {
        assert_eq!(next_text(&mut local).await, i.to_string());
    }
    assert!(
        !sleeper.is_finished(),
        "the client was read again only when Redis woke"
    );
    let status = a.hub.broker_status();
    assert!(status.client_reads_paused >= 1, "{status:?}");
    assert!(!status.publisher_connected, "{status:?}");
    assert_eq!(status.publish_dropped, 0, "{status:?}");
    assert!(status.publish_failures >= 1, "{status:?}");
    sleeper.await.unwrap();
}

#[tokio::test]
async fn an_abandoned_wait_for_room_is_counted_as_dropped() {
    let stall = Duration::from_secs(1);
    let redis = RedisServer::start().await;
    let a = instance(Hub::builder(), patient(&redis.url(), stall)).await;
    let mut local = a.connect("r").await;
    wait_subscribed(&a.hub, 1).await;

    let sleeper = stall_redis_confirmed(&redis, 1).await;
    let mut sent = 0;
    let gave_up = loop {
        match tokio::time::timeout(
            Duration::from_millis(200),
            a.hub
                .publish_with_backpressure("r", Message::text(sent.to_string())),
        )
        .await
        {
            Ok(result) => {
                result.unwrap();
                sent += 1;
            }
            Err(_) => break sent,
        }
        assert!(sent < 100, "no publish ever waited");
    };
    // The one given up on reached the local member, not Redis: counted.
    for i in 0..=gave_up {
        assert_eq!(next_text(&mut local).await, i.to_string());
    }
    assert_eq!(a.hub.broker_status().publish_dropped, 1);
    sleeper.await.unwrap();
    eventually("the rest published", || {
        a.hub.broker_status().published >= gave_up as u64
    })
    .await;
    let status = a.hub.broker_status();
    assert_eq!(
        (status.publish_dropped, status.publish_failures),
        (1, 0),
        "{status:?}"
    );
}

#[tokio::test]
async fn with_redis_absent_at_start_up_waits_end_and_every_message_is_counted_once() {
    let redis = RedisServer::unused().await;
    let config = one_publisher(
        &redis.url(),
        2,
        Duration::from_secs(1),
        Duration::from_secs(1),
    );
    let hub = Hub::builder().redis(config).build();
    for i in 0..6 {
        // Accepted while the first connection attempt is under way, then failed with it; or
        // refused once it failed. Never a wait longer than that attempt.
        let _ = tokio::time::timeout(
            Duration::from_secs(5),
            hub.publish_with_backpressure("r", Message::text(i.to_string())),
        )
        .await
        .unwrap_or_else(|_| panic!("publish {i} waited 5 s"));
    }
    eventually("every message counted", || {
        let status = hub.broker_status();
        status.publish_failures + status.publish_dropped + status.published >= 6
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let status = hub.broker_status();
    assert_eq!(outcomes(&status), (0, 6, 0), "{status:?}");
}

#[tokio::test]
async fn shutdown_ends_waits_for_room_and_counts_every_message_once() {
    let redis = RedisServer::start().await;
    let hub = hub_with_one_publisher(&redis, 2, Duration::from_secs(1)).await;
    let sleeper = stall_redis_confirmed(&redis, 4).await;
    let tasks: Vec<_> = (0..10)
        .map(|i| {
            let hub = hub.clone();
            tokio::spawn(async move {
                hub.publish_with_backpressure("r", Message::text(i.to_string()))
                    .await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    hub.shutdown().await;
    for task in tasks {
        // Queued (`Ok`), then failed with the queue; or refused: either way it ends.
        let _ = tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("a wait outlived the shutdown by 5 s")
            .unwrap();
    }
    let status = hub.broker_status();
    assert_eq!(
        (
            status.published,
            status.publish_failures + status.publish_dropped
        ),
        (0, 10),
        "{status:?}"
    );
    drop(sleeper);
}

#[tokio::test]
async fn a_waiter_handed_its_place_just_before_shutdown_is_refused_not_lost() {
    let redis = RedisServer::start().await;
    let hub = hub_with_one_publisher(&redis, 1, Duration::from_secs(10)).await;
    let sleeper = stall_redis_confirmed(&redis, 1).await;
    hub.publish_with_backpressure("r", Message::text("0"))
        .await
        .unwrap();
    // Waits until the publisher takes "0" (and stalls on Redis), then takes the freed place.
    hub.publish_with_backpressure("r", Message::text("1"))
        .await
        .unwrap();
    let waiter = hub.publish_with_backpressure("r", Message::text("2"));
    tokio::pin!(waiter);
    assert!(
        futures_util::poll!(&mut waiter).is_pending(),
        "queue full: must wait"
    );
    // Redis wakes; "0" then "1" go out; taking "1" hands its place to the (unpolled) waiter,
    // which is only polled again once the broker has stopped.
    eventually("0 and 1 published", || hub.broker_status().published == 2).await;
    sleeper.await.unwrap();
    hub.shutdown().await;
    let result = waiter.await;
    let status = hub.broker_status();
    assert!(
        matches!(result, Err(PublishError::BrokerUnavailable { .. })),
        "{result:?} {status:?}"
    );
    assert_eq!(outcomes(&status), (2, 1, 0), "{status:?}");
}

/// A waiting publish handed its place (a plain publish's, freed as the publisher took it) and
/// then never polled again before shutdown (a `select!` that went on to shut down, say) does
/// not hold the shutdown up for the Redis tasks' whole time limit: it is refused and counted
/// when it is polled.
#[tokio::test]
async fn shutdown_does_not_wait_for_a_place_handed_to_a_publish_nobody_polls() {
    let redis = RedisServer::start().await;
    // Operations may take 2 s (the 1 s stall below is no timeout); the flush waits that long
    // at most for places reserved before the close, the Redis tasks' limit is three times it.
    let hub = hub_with_one_publisher(&redis, 1, Duration::from_secs(2)).await;
    let sleeper = stall_redis_confirmed(&redis, 1).await;
    hub.publish("r", Message::text("a")).await.unwrap();
    // Once the publisher took "a" (and stalled on Redis), "b" fills the queue, taking no
    // share of it for waiters. (Refused, and counted as dropped, while "a" still fills it.)
    let mut refused = 0;
    while hub.publish("r", Message::text("b")).await.is_err() {
        refused += 1;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let waiter = hub.publish_with_backpressure("r", Message::text("w"));
    tokio::pin!(waiter);
    assert!(
        futures_util::poll!(&mut waiter).is_pending(),
        "queue full: must wait"
    );
    sleeper.await.unwrap();
    // Taking "b" hands its place to the (unpolled) waiter.
    eventually("a and b published", || hub.broker_status().published == 2).await;
    // One operation timeout (2 s), not the Redis tasks' whole limit (6 s).
    tokio::time::timeout(Duration::from_secs(4), hub.shutdown())
        .await
        .expect("shutdown waited for a place held by a publish nobody polls");
    let result = waiter.await;
    let status = hub.broker_status();
    assert!(
        matches!(result, Err(PublishError::BrokerUnavailable { .. })),
        "{result:?} {status:?}"
    );
    assert_eq!(outcomes(&status), (2, 1, refused), "{status:?}");
}

#[tokio::test]
async fn when_redis_is_too_slow_publishes_fail_fast_and_are_counted() {
    let redis = RedisServer::start().await;
    let a = instance(
        Hub::builder(),
        config(&redis.url()).publisher_tasks(1).publish_queue(4),
    )
    .await;
    let mut listener = a.connect("r").await;
    wait_subscribed(&a.hub, 1).await;

    // Redis stops answering anyone for a second (a stand-in for an overloaded server).
    let sleeper = stall_redis_for_a_second(&redis).await;
    let mut refused = 0;
    for i in 0..50 {
        match a.hub.publish("r", Message::text(i.to_string())).await {
            Ok(_) => {}
            Err(PublishError::BrokerUnavailable { .. }) => refused += 1,
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    assert!(refused > 0, "a full queue must refuse, not wait");
    // Local delivery did not wait for Redis.
    for i in 0..50 {
        assert_eq!(next_text(&mut listener).await, i.to_string());
    }
    let status = a.hub.broker_status();
    assert!(
        status.publish_dropped + status.publish_failures >= refused,
        "{status:?}"
    );
    sleeper.await.unwrap();

    // Once Redis answers again, the instance is back by itself.
    wait_subscribed(&a.hub, 1).await;
    eventually("publishing is back", || {
        a.hub.broker_status().publisher_connected
    })
    .await;
}

#[tokio::test]
async fn garbage_on_a_room_channel_is_dropped_and_counted_without_disconnecting_anyone() {
    let redis = RedisServer::start().await;
    let (a, b) = pair(&redis).await;
    let (mut ca, mut cb) = one_client_each(&a, &b, "r").await;
    let mut plain = redis.connection().await;

    let mut bad_version = envelope_by_hand(0x01, b"x");
    bad_version[1] = 0x02;
    let garbage: Vec<Vec<u8>> = vec![
        Vec::new(),
        b"hello".to_vec(),
        br#"{"json":"is not an envelope, however long it is"}"#.to_vec(),
        envelope_by_hand(0x01, b"")[..18].to_vec(),
        bad_version,
        envelope_by_hand(0x07, b"unknown kind"),
        envelope_by_hand(0x01, b"not utf-8 \xff\xfe"),
    ];
    for bytes in &garbage {
        publish_raw(&mut plain, "tower-ws-hub:r", bytes).await;
    }
    let expected = garbage.len() as u64;
    eventually("both instances counted the garbage", || {
        a.hub.broker_status().invalid_envelopes == expected
            && b.hub.broker_status().invalid_envelopes == expected
    })
    .await;

    send_text(&mut ca, "still here").await;
    assert_eq!(next_text(&mut cb).await, "still here");
    send_text(&mut cb, "me too").await;
    assert_eq!(next_text(&mut ca).await, "me too");
}

#[tokio::test]
async fn a_hand_built_envelope_published_with_plain_publish_reaches_clients() {
    let redis = RedisServer::start().await;
    let (a, b) = pair(&redis).await;
    let (mut ca, mut cb) = one_client_each(&a, &b, "news").await;
    let mut plain = redis.connection().await;

    let receivers = publish_raw(
        &mut plain,
        "tower-ws-hub:news",
        &envelope_by_hand(0x01, "héllo from outside".as_bytes()),
    )
    .await;
    assert_eq!(receivers, 2, "one subscriber connection per instance");
    assert_eq!(next_text(&mut ca).await, "héllo from outside");
    assert_eq!(next_text(&mut cb).await, "héllo from outside");

    publish_raw(
        &mut plain,
        "tower-ws-hub:news",
        &envelope_by_hand(0x02, &[0, 1, 2, 0xff]),
    )
    .await;
    for client in [&mut ca, &mut cb] {
        match next_data(client).await {
            WsMessage::Binary(bytes) => assert_eq!(&bytes[..], &[0, 1, 2, 0xff]),
            other => panic!("expected binary, got {other:?}"),
        }
    }
    // The library's emitter speaks the same format.
    let emitter = tower_ws_hub::redis::Emitter::new();
    let count = emitter
        .emit(&mut plain, "news", Message::text("via Emitter"))
        .await
        .unwrap();
    assert_eq!(count, 2);
    assert_eq!(next_text(&mut cb).await, "via Emitter");
}

/// The shell emitters README gives ("From a shell"), run as written by POSIX `sh` (dash on
/// Debian, whose `printf` knows no `\x`) against a throwaway Redis: each delivers "hello" to a
/// client in room `lobby`.
#[tokio::test]
async fn the_readmes_shell_emitters_reach_clients() {
    let readme = include_str!("../README.md");
    let block = readme
        .split("```sh\n# text \"hello\" to room lobby\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("README's shell emitter block");
    // One command per line, `\`-continued lines joined; comments left out.
    let commands: Vec<String> = block
        .replace("\\\n", " ")
        .lines()
        .filter(|line| !line.trim_start().starts_with('#') && !line.trim().is_empty())
        .map(str::to_owned)
        .collect();
    assert_eq!(commands.len(), 2, "{commands:?}");

    let found = tokio::process::Command::new("redis-cli")
        .arg("--version")
        .output()
        .await;
    assert!(
        found.is_ok_and(|output| output.status.success()),
        "this test runs README's redis-cli lines: install redis-cli (Debian/Ubuntu: apt-get \
         install redis-server, which brings it)"
    );
    let redis = RedisServer::start().await;
    let a = instance(Hub::builder(), config(&redis.url())).await;
    let mut client = a.connect("lobby").await;
    wait_subscribed(&a.hub, 1).await;
    for command in &commands {
        assert_eq!(
            run_redis_cli(&redis, command).await,
            "1",
            "{command}: the one instance with a member in the room is subscribed"
        );
        assert_eq!(next_text(&mut client).await, "hello", "{command}");
    }
}

/// Runs a README `redis-cli` line in `sh`, as a user would, against `redis` (its port put
/// in); it must succeed. Returns what it printed, trimmed.
async fn run_redis_cli(redis: &RedisServer, line: &str) -> String {
    let command = line.replace("redis-cli", &format!("redis-cli -p {}", redis.port()));
    let output = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(&command)
        .output()
        .await
        .expect("sh runs");
    assert!(output.status.success(), "{command}: {output:?}");
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// README's Redis user for the hubs ("A Redis user of their own"), created as written with
/// `redis-cli`, is all two instances need: they connect as that user through
/// `RedisConfig::from_url` (its password holding URL-reserved characters, percent-encoded) and
/// carry messages between them. A user limited to the room channels (`{prefix}:*`) could not
/// subscribe to its probe channel (`{prefix}#probe:…`) and the hubs would never connect.
#[tokio::test]
async fn the_readmes_redis_user_is_enough_for_the_hubs() {
    let readme = include_str!("../README.md");
    let line = readme
        .lines()
        .find(|line| line.starts_with("redis-cli ACL SETUSER hub "))
        .expect("README gives the redis-cli line that creates a user for the hubs");
    assert!(line.contains("'>change-me'"), "{line}");
    // A password with characters a URL reserves: `from_url` takes it percent-encoded, and both
    // the pool and the subscriber connections must log in with it.
    let password = "p@ss:w/o#rd%1";
    let encoded = "p%40ss%3Aw%2Fo%23rd%251";
    let redis = RedisServer::start().await;
    let command = line.replace("change-me", password);
    assert_eq!(run_redis_cli(&redis, &command).await, "OK", "{command}");

    let url = format!("redis://hub:{encoded}@127.0.0.1:{}", redis.port());
    let as_hub_user = config(&url);
    let shown = format!("{as_hub_user:?}");
    assert!(
        !shown.contains("p@ss") && !shown.contains(encoded),
        "{shown}"
    );
    let a = instance(Hub::builder(), as_hub_user.clone()).await;
    let b = instance(Hub::builder(), as_hub_user).await;
    let mut ca = a.connect("lobby").await;
    let mut cb = b.connect("lobby").await;
    wait_members(&a.hub, "lobby", 1).await;
    wait_members(&b.hub, "lobby", 1).await;
    for server in [&a, &b] {
        eventually("connected and subscribed as README's user", || {
            let status = server.hub.broker_status();
            status.connected && status.subscribed_rooms == 1 && status.last_probe_age.is_some()
        })
        .await;
    }
    send_text(&mut ca, "as the hub user").await;
    assert_eq!(next_text(&mut cb).await, "as the hub user");
    b.hub
        .publish("lobby", Message::text("and back"))
        .await
        .unwrap();
    assert_eq!(next_text(&mut ca).await, "and back");
    assert_eq!(a.hub.broker_status().publish_failures, 0);
    assert_eq!(b.hub.broker_status().publish_failures, 0);
}

#[tokio::test]
async fn with_a_signing_key_only_holders_of_the_key_can_speak_in_rooms() {
    use tower_ws_hub::redis::{Emitter, EnvelopeKey};
    let redis = RedisServer::start().await;
    let key = EnvelopeKey::new(b"0123456789abcdef0123456789abcdef");
    let signed = |url: &str| config(url).signing_key(key.clone());
    let a = instance(Hub::builder(), signed(&redis.url())).await;
    let b = instance(Hub::builder(), signed(&redis.url())).await;
    let (mut ca, mut cb) = one_client_each(&a, &b, "vault").await;

    // Instances holding the key talk to each other as usual.
    send_text(&mut ca, "signed and delivered").await;
    assert_eq!(next_text(&mut cb).await, "signed and delivered");

    let mut plain = redis.connection().await;
    // An unsigned envelope, well-formed in every other way: dropped by both.
    publish_raw(
        &mut plain,
        "tower-ws-hub:vault",
        &envelope_by_hand(0x01, b"forged"),
    )
    .await;
    // Signed with another key, and a tag made of zeros: dropped too.
    let other = Emitter::new().signing_key(EnvelopeKey::new([9u8; 32]));
    other
        .emit(&mut plain, "vault", Message::text("wrong key"))
        .await
        .unwrap();
    let mut zero_tag = envelope_by_hand(0x81, b"");
    zero_tag.extend_from_slice(&[0u8; 32]);
    zero_tag.extend_from_slice(b"zero tag");
    publish_raw(&mut plain, "tower-ws-hub:vault", &zero_tag).await;
    eventually("both instances dropped the three injections", || {
        a.hub.broker_status().invalid_envelopes == 3 && b.hub.broker_status().invalid_envelopes == 3
    })
    .await;

    // An emitter holding the key gets through, and nothing injected before it arrives.
    let emitter = Emitter::new().signing_key(key.clone());
    emitter
        .emit(&mut plain, "vault", Message::text("from a trusted worker"))
        .await
        .unwrap();
    assert_eq!(next_text(&mut ca).await, "from a trusted worker");
    assert_eq!(next_text(&mut cb).await, "from a trusted worker");
    assert_silent(&mut ca, Duration::from_millis(200)).await;
}

#[tokio::test]
async fn with_redis_down_at_start_up_the_hub_serves_locally_and_connects_when_redis_appears() {
    let mut redis = RedisServer::unused().await;
    // build() returns at once; the broker retries in the background.
    let a = instance(Hub::builder(), config(&redis.url())).await;
    let mut a1 = a.connect("r").await;
    let mut a2 = a.connect("r").await;
    wait_members(&a.hub, "r", 2).await;
    eventually("status reports the outage", || {
        let status = a.hub.broker_status();
        !status.connected && !status.publisher_connected && status.last_error.is_some()
    })
    .await;
    let result = a.hub.publish("r", Message::text("local only")).await;
    assert!(
        matches!(result, Err(PublishError::BrokerUnavailable { .. })),
        "{result:?}"
    );
    assert_eq!(next_text(&mut a1).await, "local only");
    assert_eq!(next_text(&mut a2).await, "local only");
    send_text(&mut a1, "client message").await;
    assert_eq!(next_text(&mut a2).await, "client message");

    // The strict alternative refuses to start, saying why.
    let error = Hub::builder()
        .redis(config(&redis.url()))
        .build_connected(Duration::from_millis(300))
        .await
        .unwrap_err();
    assert!(error.to_string().contains("did not connect"), "{error}");
    assert!(error.status.last_error.is_some(), "{error:?}");

    // Redis appears: the hub connects by itself, and instances talk.
    redis.restart().await;
    wait_subscribed(&a.hub, 1).await;
    let b = Hub::builder()
        .redis(config(&redis.url()))
        .build_connected(PROMPTLY)
        .await
        .expect("connects when Redis is up");
    let b = serve_hub(b).await;
    let mut b1 = b.connect("r").await;
    wait_subscribed(&b.hub, 1).await;
    send_text(&mut a1, "across").await;
    assert_eq!(next_text(&mut b1).await, "across");
}

#[tokio::test]
async fn a_subscriber_connection_that_silently_stops_receiving_is_detected_and_replaced() {
    let redis = RedisServer::start().await;
    let proxy = StarvingProxy::start(redis.addr()).await;
    let a = instance(Hub::builder(), config(&redis.url())).await;
    // B publishes directly but subscribes through the proxy.
    let b = instance_behind_starving_proxy(
        &redis,
        &proxy,
        Duration::from_millis(100),
        Duration::from_millis(400),
    )
    .await;
    let (mut ca, mut cb) = one_client_each(&a, &b, "r").await;
    send_text(&mut ca, "before").await;
    assert_eq!(next_text(&mut cb).await, "before");

    proxy.starve_open_connections();
    eventually("B noticed the starvation and resubscribed", || {
        let status = b.hub.broker_status();
        status.starvations >= 1 && status.connected && status.subscribed_rooms == 1
    })
    .await;
    send_text(&mut ca, "after").await;
    assert_eq!(next_text(&mut cb).await, "after");
    eventually("the new connection passed a probe", || {
        b.hub.broker_status().last_probe_age.is_some()
    })
    .await;
}

/// A config whose only subscriber connection goes through the proxy at `proxy_url`, while
/// publishing (and probing) goes to `redis` directly.
fn subscribing_through(
    redis: &RedisServer,
    proxy_url: &str,
    interval: Duration,
    timeout: Duration,
) -> RedisConfig {
    let pool = deadpool_redis::Config::from_url(redis.url())
        .create_pool(Some(deadpool_redis::Runtime::Tokio1))
        .unwrap();
    RedisConfig::from_pool(pool, redis::Client::open(proxy_url).unwrap())
        .subscriber_connections(1)
        .probe(interval, timeout)
}

/// B's only subscriber connection goes through a proxy that can starve it; B publishes (and
/// probes) directly.
async fn instance_behind_starving_proxy(
    redis: &RedisServer,
    proxy: &StarvingProxy,
    interval: Duration,
    timeout: Duration,
) -> Server {
    let config = subscribing_through(redis, &proxy.url(), interval, timeout);
    instance(Hub::builder(), config).await
}

/// A throwaway Redis, a starving proxy, and instance B behind it with one client in room `r`,
/// everything subscribed.
async fn member_behind_starving_proxy(
    interval: Duration,
    timeout: Duration,
) -> (RedisServer, StarvingProxy, Server, Client) {
    let redis = RedisServer::start().await;
    let proxy = StarvingProxy::start(redis.addr()).await;
    let b = instance_behind_starving_proxy(&redis, &proxy, interval, timeout).await;
    let client = b.connect("r").await;
    wait_members(&b.hub, "r", 1).await;
    wait_subscribed(&b.hub, 1).await;
    (redis, proxy, b, client)
}

#[tokio::test]
async fn a_stray_number_on_a_probe_channel_does_not_hide_a_starved_connection() {
    let (redis, proxy, b, mut cb) =
        member_behind_starving_proxy(Duration::from_millis(100), Duration::from_millis(400)).await;
    eventually("a probe came back", || {
        b.hub.broker_status().last_probe_age.is_some()
    })
    .await;

    // Anyone can find the probe channel and publish on it: a huge sequence number (what an
    // earlier session's late probe, or a stray client, could send) must not count as every
    // future probe having come back.
    let mut plain = redis.connection().await;
    let probes: Vec<String> = redis::cmd("PUBSUB")
        .arg("CHANNELS")
        .arg("tower-ws-hub#probe:*")
        .query_async(&mut plain)
        .await
        .unwrap();
    assert_eq!(probes.len(), 1, "{probes:?}");
    for stray in [u64::MAX.to_string(), format!("{:016x}:{}", 0, u64::MAX)] {
        assert_eq!(
            publish_raw(&mut plain, &probes[0], stray.as_bytes()).await,
            1
        );
    }
    tokio::time::sleep(Duration::from_millis(100)).await;

    proxy.starve_open_connections();
    eventually("the starved connection was replaced", || {
        let status = b.hub.broker_status();
        status.starvations >= 1 && status.connected && status.subscribed_rooms == 1
    })
    .await;
    let envelope = envelope_by_hand(0x01, b"after");
    assert_eq!(
        publish_raw(&mut plain, "tower-ws-hub:r", &envelope).await,
        1
    );
    assert_eq!(next_text(&mut cb).await, "after");
}

#[tokio::test]
async fn a_subscriber_connection_overdue_on_its_probe_is_not_reported_connected() {
    // The connection is replaced only at the probe tick after the timeout: here up to 1.3 s
    // during which it is known to be overdue.
    let (_redis, proxy, b, _cb) =
        member_behind_starving_proxy(Duration::from_millis(1500), Duration::from_millis(200)).await;

    proxy.starve_open_connections();
    // Still connected and the publisher up, but a probe is overdue: not ready.
    eventually("the overdue probe shows in `connected`", || {
        let status = b.hub.broker_status();
        !status.connected
            && status.publisher_connected
            && status.subscribers_connected == 1
            && status.starvations == 0
    })
    .await;
    eventually("replaced, and connected again", || {
        let status = b.hub.broker_status();
        status.starvations >= 1 && status.connected
    })
    .await;
}

#[tokio::test]
async fn operation_timeout_is_the_only_limit_on_a_slow_redis() {
    let redis = RedisServer::start().await;
    let slow_ok = |url: &str| {
        config(url)
            .publisher_tasks(1)
            .operation_timeout(Duration::from_secs(3))
    };
    let a = instance(Hub::builder(), slow_ok(&redis.url())).await;
    let b = instance(Hub::builder(), slow_ok(&redis.url())).await;
    let (_ca, mut cb) = one_client_each(&a, &b, "r").await;
    a.hub.publish("r", Message::text("warm")).await.unwrap();
    assert_eq!(next_text(&mut cb).await, "warm");

    // Redis stalls for a second (a slow script, a fork on a large dataset): well within the
    // 3 s allowed, but longer than redis-rs's own default reply timeout (500 ms).
    let sleeper = stall_redis_for_a_second(&redis).await;
    a.hub.publish("r", Message::text("slow")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(650)).await;
    let during = a.hub.publish("r", Message::text("still in time")).await;
    let status = a.hub.broker_status();
    sleeper.await.unwrap();
    assert!(
        during.is_ok(),
        "refused within operation_timeout: {during:?}, {status:?}"
    );
    assert!(status.publisher_connected, "{status:?}");
    assert_eq!(next_text(&mut cb).await, "slow");
    assert_eq!(next_text(&mut cb).await, "still in time");
    let status = a.hub.broker_status();
    assert_eq!(status.publish_failures, 0, "{status:?}");
    assert_eq!(status.published, 3, "{status:?}");
}

#[tokio::test]
async fn shutdown_closes_the_subscriber_connections() {
    let redis = RedisServer::start().await;
    let a = instance(Hub::builder(), config(&redis.url())).await;
    // The test's client never answers the close frame: do not wait for it long.
    let b = instance(
        Hub::builder()
            .close_timeout(Duration::from_millis(100))
            .shutdown_grace(Duration::from_millis(200)),
        config(&redis.url()),
    )
    .await;
    let (_ca, _cb) = one_client_each(&a, &b, "r").await;
    let mut plain = redis.connection().await;
    assert_eq!(numsub(&mut plain, "tower-ws-hub:r").await, 2);

    tokio::time::timeout(PROMPTLY, b.hub.shutdown())
        .await
        .expect("shutdown finished");
    eventually_async("B's subscription is gone", || {
        let mut plain = plain.clone();
        async move { numsub(&mut plain, "tower-ws-hub:r").await == 1 }
    })
    .await;
    assert!(!b.hub.broker_status().connected);
}

/// [`eventually`] for a condition that needs to ask Redis.
async fn eventually_async<F: std::future::Future<Output = bool>>(
    what: &str,
    mut cond: impl FnMut() -> F,
) {
    let deadline = tokio::time::Instant::now() + PROMPTLY;
    while !cond().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Rooms on `server` that keep gaining their first member and losing their last: 12 loops,
/// each joining a fresh room, staying 40 ms and leaving (about 250 room changes a second).
struct Churn {
    stop: Arc<AtomicBool>,
    loops: Vec<tokio::task::JoinHandle<u64>>,
}

impl Churn {
    fn start(server: &Server) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let loops = (0..12)
            .map(|n| {
                let base = server.ws_url("churn");
                let stop = Arc::clone(&stop);
                tokio::spawn(async move {
                    let mut rooms = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let client = connect(&format!("{base}-{n}-{rooms}")).await;
                        tokio::time::sleep(Duration::from_millis(40)).await;
                        close_client(client).await;
                        rooms += 1;
                    }
                    rooms
                })
            })
            .collect();
        Self { stop, loops }
    }

    /// Stops the loops; the number of rooms they made.
    async fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        let mut rooms = 0;
        for task in self.loops {
            rooms += task.await.unwrap();
        }
        rooms
    }
}

/// Rooms that keep gaining their first member and losing their last (per-user rooms during a
/// reconnect storm) keep the subscriber connection busy with SUBSCRIBE and UNSUBSCRIBE round
/// trips. Messages from other instances must still reach local members promptly, and the
/// probe must keep running without calling the connection starved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_churn_does_not_keep_a_subscriber_connection_from_reading() {
    let redis = RedisServer::start().await;
    // A's one subscriber connection talks to a Redis 10 ms away: every reconcile takes 20 ms
    // or more, and the churn below makes one due at all times.
    let proxy = LatencyProxy::start(redis.addr(), Duration::from_millis(10)).await;
    let config_a = subscribing_through(
        &redis,
        &proxy.url(),
        Duration::from_millis(200),
        Duration::from_secs(2),
    );
    let a = instance(Hub::builder(), config_a).await;
    let b = instance(Hub::builder(), config(&redis.url())).await;
    let (mut ca, mut cb) = one_client_each(&a, &b, "stable").await;
    send_text(&mut cb, "before").await;
    assert_eq!(next_text(&mut ca).await, "before");

    let churn = Churn::start(&a);
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Each message must arrive (without the fix, none did while the churn lasted), and the
    // probe must keep coming back: the age of its last success drops at least once between
    // two looks (without the fix it only grew).
    let mut probe_ages = Vec::new();
    for i in 0..5 {
        let text = format!("during churn {i}");
        send_text(&mut cb, &text).await;
        let got = tokio::time::timeout(PROMPTLY, next_text(&mut ca)).await;
        assert_eq!(
            got.as_deref().ok(),
            Some(text.as_str()),
            "{:?}",
            a.hub.broker_status()
        );
        // Longer than a probe interval.
        tokio::time::sleep(Duration::from_millis(300)).await;
        probe_ages.push(a.hub.broker_status().last_probe_age);
    }
    let changes = churn.stop().await;
    let status = a.hub.broker_status();
    assert!(changes > 50, "the churn made only {changes} rooms");
    assert!(
        probe_ages.windows(2).any(|pair| pair[1] < pair[0]),
        "the probe stopped coming back while rooms churned (ages of its last success: \
         {probe_ages:?}); A: {status:?}"
    );
    assert_eq!(
        status.starvations, 0,
        "a healthy connection was called starved: {status:?}"
    );
}

/// With a signing key, an envelope not signed with it is counted in `invalid_envelopes`, even
/// when it carries this instance's own id (which is no secret: it is in the probe channels'
/// names) and would otherwise be skipped as the instance's own message coming back.
#[tokio::test]
async fn a_forged_envelope_with_the_instances_own_id_counts_as_invalid() {
    use tower_ws_hub::redis::EnvelopeKey;
    let redis = RedisServer::start().await;
    let hub = instance(
        Hub::builder(),
        config(&redis.url()).signing_key(EnvelopeKey::new([7u8; 32])),
    )
    .await;
    let mut member = hub.connect("r").await;
    wait_members(&hub.hub, "r", 1).await;
    wait_subscribed(&hub.hub, 1).await;
    let mut plain = redis.connection().await;
    let own_id = own_instance_id(&mut plain).await;
    let mut forged = vec![0xF7, 0x01, 0x01];
    forged.extend_from_slice(&own_id);
    forged.extend_from_slice(b"forged");
    publish_raw(&mut plain, "tower-ws-hub:r", &forged).await;
    // The hub's own messages still come back and are skipped without being counted.
    hub.hub.publish("r", Message::text("own")).await.unwrap();
    assert_eq!(next_text(&mut member).await, "own");
    eventually("the forgery counted", || {
        hub.hub.broker_status().invalid_envelopes == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_silent(&mut member, Duration::from_millis(100)).await;
    assert_eq!(hub.hub.broker_status().invalid_envelopes, 1);
}

/// Two applications on one Redis with different prefixes never hear each other, however their
/// room names look. A prefix with `:` (or `#`) is refused: room names may contain `:`, so
/// `chat` + room `staging:lobby` and `chat:staging` + room `lobby` would be one channel.
#[tokio::test]
async fn different_channel_prefixes_keep_applications_apart() {
    let refused = std::panic::catch_unwind(|| {
        RedisConfig::from_url("redis://127.0.0.1:1")
            .unwrap()
            .channel_prefix("chat:staging")
    });
    assert!(refused.is_err(), "a prefix with ':' was accepted");
    let refused =
        std::panic::catch_unwind(|| tower_ws_hub::redis::Emitter::with_prefix("chat:staging"));
    assert!(refused.is_err(), "an emitter took a prefix with ':'");
    let redis = RedisServer::start().await;
    let production = instance(Hub::builder(), config(&redis.url()).channel_prefix("chat")).await;
    let staging = instance(
        Hub::builder(),
        config(&redis.url()).channel_prefix("chat-staging"),
    )
    .await;
    // The same room name under both prefixes, and a room name that looks like the other
    // prefix; a second production instance shows that production's messages do go out.
    let production_too =
        instance(Hub::builder(), config(&redis.url()).channel_prefix("chat")).await;
    let mut in_production = production.connect("staging:lobby").await;
    let mut production_lobby = production.connect("lobby").await;
    let mut production_too_lobby = production_too.connect("lobby").await;
    let mut in_staging = staging.connect("lobby").await;
    wait_members(&production.hub, "staging:lobby", 1).await;
    wait_members(&production.hub, "lobby", 1).await;
    wait_members(&production_too.hub, "lobby", 1).await;
    wait_members(&staging.hub, "lobby", 1).await;
    wait_subscribed(&production.hub, 2).await;
    wait_subscribed(&production_too.hub, 1).await;
    wait_subscribed(&staging.hub, 1).await;
    let mut plain = redis.connection().await;
    let mut channels: Vec<String> = redis::cmd("PUBSUB")
        .arg("CHANNELS")
        .arg("chat*")
        .query_async(&mut plain)
        .await
        .unwrap();
    // Room channels only (each subscriber connection also listens on a probe channel).
    channels.retain(|channel| !channel.contains("#probe:"));
    channels.sort();
    assert_eq!(
        channels,
        ["chat-staging:lobby", "chat:lobby", "chat:staging:lobby"]
    );
    send_text(&mut in_staging, "staging only").await;
    staging
        .hub
        .publish("lobby", Message::text("staging, from the app"))
        .await
        .unwrap();
    send_text(&mut production_too_lobby, "production").await;
    assert_eq!(next_text(&mut production_lobby).await, "production");
    assert_silent(&mut in_production, Duration::from_millis(500)).await;
    assert_silent(&mut production_lobby, Duration::from_millis(100)).await;
}

/// Database numbers do not separate pub/sub channels (README, `RedisConfig::channel_prefix`):
/// a hub whose URL names a database other than 0 while it keeps the default prefix says so
/// once, at start; with database 0 or a prefix of its own it says nothing. (No Redis needed:
/// the warning comes from `build`, before anything connects.)
#[tokio::test]
async fn a_database_number_with_the_default_prefix_is_warned_about_at_start() {
    let unreachable = "redis://127.0.0.1:1";
    let (warnings, logs) = warnings_at_start("pub/sub channels are shared", || {
        vec![
            // Warned.
            RedisConfig::from_url(&format!("{unreachable}/3")).unwrap(),
            // Quiet.
            RedisConfig::from_url(&format!("{unreachable}/0")).unwrap(),
            RedisConfig::from_url(&format!("{unreachable}/3"))
                .unwrap()
                .channel_prefix("chat-staging"),
        ]
    })
    .await;
    assert_eq!(warnings.len(), 1, "{logs}");
    assert!(warnings[0].contains("database 3"), "{logs}");
    assert!(warnings[0].contains("channel_prefix"), "{logs}");
}

/// Builds a hub with each config (`build` never waits for Redis), WARN logs captured, shuts
/// them down, and returns the captured lines that contain `needle`, and the whole log.
async fn warnings_at_start(
    needle: &str,
    configs: impl FnOnce() -> Vec<RedisConfig>,
) -> (Vec<String>, String) {
    let (guard, logs) = capture_logs(tracing::Level::WARN);
    let hubs: Vec<Hub> = configs()
        .into_iter()
        .map(|config| Hub::builder().redis(config).build())
        .collect();
    drop(guard);
    for hub in hubs {
        hub.shutdown().await;
    }
    let logs = String::from_utf8(logs.lock().unwrap().clone()).unwrap();
    let warnings = logs
        .lines()
        .filter(|line| line.contains(needle))
        .map(str::to_owned)
        .collect();
    (warnings, logs)
}

/// A pool of the caller's too small for what the hub uses at once (one connection per
/// publisher task, one per subscriber connection's probe) is warned about at start; one large
/// enough, and `from_url`'s own (which each hub sizes), are not.
#[tokio::test]
async fn a_pool_too_small_for_the_hub_is_warned_about_at_start() {
    fn pool(max_size: usize) -> deadpool_redis::Pool {
        deadpool_redis::Config::from_url("redis://127.0.0.1:1")
            .builder()
            .unwrap()
            .max_size(max_size)
            .runtime(deadpool_redis::Runtime::Tokio1)
            .build()
            .unwrap()
    }
    let client = || redis::Client::open("redis://127.0.0.1:1").unwrap();
    let (warnings, logs) = warnings_at_start("RedisConfig::from_pool holds at most", || {
        vec![
            // Warned: the defaults are 2 publisher tasks and 2 subscriber connections.
            RedisConfig::from_pool(pool(3), client()),
            // Quiet.
            RedisConfig::from_pool(pool(4), client()),
            RedisConfig::from_url("redis://127.0.0.1:1")
                .unwrap()
                .publisher_tasks(64),
        ]
    })
    .await;
    assert_eq!(warnings.len(), 1, "{logs}");
    assert!(warnings[0].contains("at most 3 connections"), "{logs}");
    assert!(warnings[0].contains("max_size"), "{logs}");
}

/// A `publish_queue` above what a tokio channel can hold is refused where it is set, with a
/// message that says so, not later inside `HubBuilder::build`.
#[test]
fn a_publish_queue_too_large_for_a_channel_is_refused_when_set() {
    let refused = std::panic::catch_unwind(|| {
        RedisConfig::from_url("redis://127.0.0.1:1")
            .unwrap()
            .publish_queue(usize::MAX)
    });
    let message = refused.expect_err("usize::MAX was accepted");
    let message = message
        .downcast_ref::<String>()
        .cloned()
        .unwrap_or_default();
    assert!(
        message.contains("publish_queue must be at most"),
        "{message}"
    );
    // The largest allowed value is accepted.
    let _ = RedisConfig::from_url("redis://127.0.0.1:1")
        .unwrap()
        .publish_queue(tokio::sync::Semaphore::MAX_PERMITS);
}

/// The probe keeps its pace while rooms change all the time: the subscriber connection's
/// SUBSCRIBE and UNSUBSCRIBE round trips (50 ms away here) must not hold up the probe's
/// PUBLISH (straight to Redis) or its clock. The bound is five probe intervals; with the round
/// trips in the way the last success was 0.8–2.6 s old at worst.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_probe_keeps_its_pace_while_rooms_churn() {
    let redis = RedisServer::start().await;
    let proxy = LatencyProxy::start(redis.addr(), Duration::from_millis(50)).await;
    let interval = Duration::from_millis(200);
    let config_a = subscribing_through(&redis, &proxy.url(), interval, Duration::from_secs(5));
    let a = instance(Hub::builder(), config_a).await;
    let churn = Churn::start(&a);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut worst = Duration::ZERO;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if let Some(age) = a.hub.broker_status().last_probe_age {
            worst = worst.max(age);
        }
    }
    churn.stop().await;
    assert!(
        worst < 5 * interval,
        "probe interval {interval:?}, yet its last success was {worst:?} old at worst: {:?}",
        a.hub.broker_status()
    );
}

/// `messages_published` counts a message where it was published: a client's message sent on A
/// and delivered on B counts once over both instances (B counts it in the broker's
/// `received`).
#[tokio::test]
async fn a_message_from_another_instance_is_not_counted_as_published_here() {
    let redis = RedisServer::start().await;
    let (a, b) = pair(&redis).await;
    let (mut ca, mut cb) = one_client_each(&a, &b, "lobby").await;
    send_text(&mut ca, "one message").await;
    assert_eq!(next_text(&mut cb).await, "one message");
    let (sa, sb) = (a.hub.stats(), b.hub.stats());
    assert_eq!(
        (sa.messages_received, sa.messages_published),
        (1, 1),
        "{sa:?}"
    );
    assert_eq!(
        (sb.messages_received, sb.messages_published),
        (0, 0),
        "{sb:?}"
    );
    assert_eq!(sb.deliveries, 1, "{sb:?}");
    assert_eq!(b.hub.broker_status().received, 1);
}

/// Publishes `count` text envelopes `0..count` to `channel` in one pipeline: Redis handles them
/// in one go and writes them to each subscriber together, so a subscriber task finds them all
/// waiting at once.
async fn flood(
    plain: &mut redis::aio::MultiplexedConnection,
    channel: &str,
    first: u64,
    count: u64,
) {
    let mut pipe = redis::pipe();
    for n in first..first + count {
        pipe.cmd("PUBLISH")
            .arg(channel)
            .arg(envelope_by_hand(0x01, n.to_string().as_bytes()))
            .ignore();
    }
    let () = pipe.query_async(plain).await.unwrap();
}

/// Instance A (built from `hub`) with a member in `flooded`, whose messages pour in from Redis
/// (pipelines of 200, one every 20 ms) and are read, and a member in `quiet`: the hub is
/// behind for as long as the flood lasts. With `strict`, the flood's member must get every
/// message in order (its queue must hold a pipeline).
struct Flood {
    _redis: RedisServer,
    a: Server,
    quiet: Client,
    strict: bool,
    stop: Arc<AtomicBool>,
    flooding: tokio::task::JoinHandle<u64>,
    reading: tokio::task::JoinHandle<u64>,
}

impl Flood {
    /// [`start`](Self::start) with these write intervals and a queue no flood fills
    /// (everything the flood sends must arrive).
    async fn with_intervals(write: Duration, max_write: Duration) -> Self {
        let hub = Hub::builder()
            .write_interval(write)
            .max_write_interval(max_write)
            .outbound_queue(100_000, 64 * 1024 * 1024);
        Self::start(hub, true).await
    }

    async fn start(hub: HubBuilder, strict: bool) -> Self {
        let redis = RedisServer::start().await;
        let a = instance(hub, config(&redis.url())).await;
        let mut flooded = a.connect("flooded").await;
        let quiet = a.connect("quiet").await;
        wait_members(&a.hub, "flooded", 1).await;
        wait_members(&a.hub, "quiet", 1).await;
        wait_subscribed(&a.hub, 2).await;
        let stop = Arc::new(AtomicBool::new(false));
        let flooding = {
            let stop = Arc::clone(&stop);
            let mut plain = redis.connection().await;
            tokio::spawn(async move {
                let mut sent = 0;
                while !stop.load(Ordering::Relaxed) {
                    flood(&mut plain, "tower-ws-hub:flooded", sent, 200).await;
                    sent += 200;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                sent
            })
        };
        let reading = tokio::spawn(async move {
            let mut expected = 0u64;
            while let Ok(text) =
                tokio::time::timeout(Duration::from_secs(5), next_text(&mut flooded)).await
            {
                if strict {
                    assert_eq!(text, expected.to_string(), "flood out of order");
                }
                expected += 1;
            }
            expected
        });
        // Under way: the first pipelines have been read.
        tokio::time::sleep(Duration::from_millis(300)).await;
        Self {
            _redis: redis,
            a,
            quiet,
            strict,
            stop,
            flooding,
            reading,
        }
    }

    /// Publishes `text` to `quiet`, whose one member gets it queued.
    async fn publish_quiet(&self, text: &str) {
        let queued = self.a.hub.publish("quiet", Message::text(text)).await;
        assert_eq!(queued.unwrap(), 1, "{text} not queued");
    }

    /// Publishes `text` to `quiet` and returns how long its member took to get it.
    async fn quiet_round_trip(&mut self, text: &str) -> Duration {
        let start = Instant::now();
        self.publish_quiet(text).await;
        assert_eq!(next_text(&mut self.quiet).await, text);
        start.elapsed()
    }

    /// The hub held at least one lone message for the backlog.
    fn assert_was_behind(&self) {
        let holds = self.a.hub.stats().backlog_holds;
        assert!(holds > 0, "the hub was never behind");
    }

    /// Stops the flood; if `strict`, checks that its member got every message, in order (its
    /// reader ends after 5 s of silence).
    async fn stop(self) -> (Server, Client) {
        self.stop.store(true, Ordering::Relaxed);
        let sent = self.flooding.await.unwrap();
        let read = self.reading.await.unwrap();
        if self.strict {
            assert_eq!(read, sent, "every flood message arrives");
        }
        (self.a, self.quiet)
    }
}

/// While messages pour in from Redis faster than the instance hands them out, a lone message
/// for a connection with nothing written lately waits for `max_write_interval` (here 2 s), to
/// share its write with what comes next; once the flood stops, the next lone message goes out
/// at once again. Nothing is lost or reordered either way.
#[tokio::test]
async fn a_lone_message_waits_for_company_while_the_hub_is_behind_and_not_after() {
    let mut flood = Flood::with_intervals(Duration::from_millis(100), Duration::from_secs(2)).await;
    // A lone message for `quiet` (nothing written to it for over 100 ms) now waits: the first
    // one that does shows the hold, and the stats count it.
    let mut held = None;
    for attempt in 0..20 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let took = flood.quiet_round_trip(&format!("lone {attempt}")).await;
        if took >= Duration::from_secs(1) {
            held = Some(took);
            break;
        }
    }
    let held = held.expect("no lone message was held while the hub was behind");
    assert!(held < Duration::from_secs(4), "held for {held:?}");
    flood.assert_was_behind();

    let (a, mut quiet) = flood.stop().await;
    let holds = a.hub.stats().backlog_holds;
    let start = Instant::now();
    assert_eq!(
        a.hub
            .publish("quiet", Message::text("after"))
            .await
            .unwrap(),
        1
    );
    assert_eq!(next_text(&mut quiet).await, "after");
    let took = start.elapsed();
    assert!(
        took < Duration::from_secs(1),
        "held after the flood: {took:?}"
    );
    assert_eq!(a.hub.stats().backlog_holds, holds);
}

/// A message that followed a write within the interval has waited for the interval: when that
/// is over it goes out, and is not held a second time for the backlog.
#[tokio::test]
async fn a_message_that_waited_for_the_interval_is_not_held_again_while_behind() {
    let mut flood = Flood::with_intervals(Duration::from_millis(500), Duration::from_secs(3)).await;
    for attempt in 0..3 {
        // The first may be held for the backlog (up to 3 s); the second follows its write at
        // once, so it waits for the interval (500 ms), and only for that.
        flood.quiet_round_trip(&format!("first {attempt}")).await;
        let second = flood.quiet_round_trip(&format!("second {attempt}")).await;
        assert!(
            second < Duration::from_millis(2000),
            "the second message waited {second:?}: the interval and then a backlog hold"
        );
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    flood.assert_was_behind();
    flood.stop().await;
}

/// A hold for the backlog ends once the queue is a quarter full: a client that keeps up, with
/// a small queue, loses nothing to it (here `DropNewest` with room for 8 messages, a message
/// every 50 ms, and holds of up to 2 s, in which 40 would arrive). The flood's member, with
/// the same small queue, drops most of each pipeline; that is its policy at work.
#[tokio::test]
async fn a_hold_while_behind_does_not_overflow_a_small_queue() {
    let mut flood = Flood::start(
        Hub::builder()
            .write_interval(Duration::from_millis(100))
            .max_write_interval(Duration::from_secs(2))
            .slow_consumer_policy(SlowConsumerPolicy::DropNewest)
            .outbound_queue(8, 1024 * 1024),
        false,
    )
    .await;
    for n in 0..40 {
        flood.publish_quiet(&n.to_string()).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for n in 0..40 {
        assert_eq!(next_text(&mut flood.quiet).await, n.to_string());
    }
    flood.assert_was_behind();
    flood.stop().await;
}

/// The write that ends a hold for the backlog says nothing about the connection's stream (the
/// hold itself gathered what came): it does not grow the write interval. A message right
/// after it waits for `write_interval` (1 s here), not for a grown interval (2 s).
#[tokio::test]
async fn the_write_ending_a_hold_while_behind_does_not_grow_the_interval() {
    let mut flood = Flood::with_intervals(Duration::from_secs(1), Duration::from_secs(4)).await;
    let mut checked = false;
    for attempt in 0..5 {
        // Two messages 100 ms apart: if the first is held for the backlog, both go out
        // together at the end of the hold.
        let start = Instant::now();
        let (first, second) = (format!("a{attempt}"), format!("b{attempt}"));
        flood.publish_quiet(&first).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        flood.publish_quiet(&second).await;
        assert_eq!(next_text(&mut flood.quiet).await, first);
        let held = start.elapsed() >= Duration::from_secs(2);
        assert_eq!(next_text(&mut flood.quiet).await, second);
        if held {
            let took = flood.quiet_round_trip(&format!("c{attempt}")).await;
            assert!(
                took < Duration::from_millis(1600),
                "a message right after the hold's write waited {took:?}: the interval grew"
            );
            checked = true;
            break;
        }
        // Not held (the hub was not behind just then): a quiet spell, and again.
        tokio::time::sleep(Duration::from_millis(1200)).await;
    }
    assert!(checked, "the hub was never behind when a lone message came");
    flood.stop().await;
}

/// Review: messages the publisher task holds (queued for Redis, or in the pipeline being sent)
/// when the runtime goes away without `Hub::shutdown` must be counted like the ones a
/// connection still held (`LeftOver`): every message read from a client reaches Redis or is
/// counted.
#[test]
fn every_message_read_from_a_client_is_counted_when_the_runtime_goes_away() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (redis, hub, sleeper, clients, read) = runtime.block_on(async {
        let redis = RedisServer::start().await;
        let a = instance(
            Hub::builder(),
            patient(&redis.url(), Duration::from_secs(3)),
        )
        .await;
        // Everything the connection read reached the local member; it waits for Redis in the
        // pipeline being sent, in the queue, or with the connection.
        let (sleeper, clients, read) = sent_during_a_stall(&a, &redis).await;
        assert_eq!(a.hub.broker_status().published, 0);
        (redis, a.hub.clone(), sleeper, clients, read)
    });
    drop(runtime);
    drop((sleeper, clients));
    let after = hub.broker_status();
    assert_eq!(
        after.published + after.publish_failures + after.publish_dropped,
        read as u64,
        "{read} messages read from the client, but only these counted: {after:?}"
    );
    drop(redis);
}

/// A subscriber connection that connects and subscribes but is then found starved at every
/// attempt (here Redis says nobody is subscribed to its probe, because the pool publishes to
/// another server) is retried with the growing backoff (capped at 500 ms by default), not every
/// 25–50 ms forever, resubscribing every room and logging a warning each time.
#[tokio::test]
async fn a_connection_found_starved_at_every_attempt_backs_off() {
    let subscribing = RedisServer::start().await;
    let publishing = RedisServer::start().await;
    let pool = deadpool_redis::Config::from_url(publishing.url())
        .create_pool(Some(deadpool_redis::Runtime::Tokio1))
        .unwrap();
    let config = RedisConfig::from_pool(pool, redis::Client::open(subscribing.url()).unwrap())
        .subscriber_connections(1)
        .probe(Duration::from_millis(200), Duration::from_secs(1));
    let (guard, logs) = capture_logs(tracing::Level::WARN);
    let started = std::time::Instant::now();
    let a = instance(Hub::builder(), config).await;
    let _member = a.connect("r").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    drop(guard);
    let captured_for = started.elapsed();
    let status = a.hub.broker_status();
    // Backing off up to 500 ms: about 10 attempts in 3 s (without it, 75 here).
    assert!(
        status.starvations >= 1 && status.starvations <= 20,
        "{} starvations in 3 s; {status:?}",
        status.starvations
    );
    // And said at most once a second, with the count of what was not.
    let logs = String::from_utf8(logs.lock().unwrap().clone()).unwrap();
    let lines = logs
        .lines()
        .filter(|line| line.contains("starved, replacing it"))
        .count();
    let most = captured_for.as_secs() as usize + 1;
    assert!(
        (1..=most).contains(&lines),
        "{lines} lines in {captured_for:?}:\n{logs}"
    );
}

/// Redis refusing the subscriber connection (a password it wants and was not given, a wrong
/// one) is said as such, once a second at most, not as "cannot reach Redis": the fix is in
/// the credentials or the ACL, not the network.
#[tokio::test]
async fn a_subscriber_refused_by_redis_says_so_at_a_sane_rate() {
    let redis = RedisServer::start().await;
    let mut admin = redis.connection().await;
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("requirepass")
        .arg("right")
        .query_async(&mut admin)
        .await
        .unwrap();
    let port = redis.port();
    for (url, refusal) in [
        (format!("redis://127.0.0.1:{port}"), "NOAUTH"),
        (
            format!("redis://:wrong@127.0.0.1:{port}"),
            "AuthenticationFailed",
        ),
    ] {
        let config = config(&url)
            .subscriber_connections(2)
            .reconnect_backoff(Duration::from_millis(5), Duration::from_millis(20));
        let (guard, logs) = capture_logs(tracing::Level::WARN);
        let started = std::time::Instant::now();
        let hub = instance(Hub::builder(), config).await;
        let member = hub.connect("r").await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        drop(guard);
        let captured_for = started.elapsed();
        let status = hub.hub.broker_status();
        assert!(!status.connected, "{status:?}");
        let error = status.last_error.clone().unwrap_or_default();
        assert!(error.contains(refusal), "{url}: {status:?}");
        let logs = String::from_utf8(logs.lock().unwrap().clone()).unwrap();
        let refused: Vec<&str> = logs
            .lines()
            .filter(|line| line.contains("Redis refused the subscriber connection"))
            .collect();
        // Two subscriber connections retrying every 20 ms or less (some 75 refusals a
        // second): one line a second, the later ones with the count of the others.
        let most = captured_for.as_secs() as usize + 1;
        assert!((1..=most).contains(&refused.len()), "{url}:\n{logs}");
        assert!(!refused[0].contains("   "), "one sentence: {}", refused[0]);
        assert!(refused[0].contains("ACL"), "{url}:\n{logs}");
        assert!(
            refused[0].contains("tower-ws-hub:* and tower-ws-hub#probe:*"),
            "{logs}"
        );
        assert!(!logs.contains("cannot reach Redis"), "{url}:\n{logs}");
        drop(member);
        hub.hub.shutdown().await;
    }
}

/// Without a signing key, garbage on a room channel is counted in `invalid_envelopes` (README:
/// "Decoding is strict ... dropped, counted") even when it carries this instance's own id,
/// which anyone can read from the probe channels' names.
#[tokio::test]
async fn malformed_envelopes_with_the_instances_own_id_are_counted_without_a_key() {
    let redis = RedisServer::start().await;
    let hub = instance(Hub::builder(), config(&redis.url())).await;
    let _member = hub.connect("r").await;
    wait_members(&hub.hub, "r", 1).await;
    wait_subscribed(&hub.hub, 1).await;
    let mut plain = redis.connection().await;
    let own_id = own_instance_id(&mut plain).await;
    // Unknown kind 0x05, then a text envelope that is not UTF-8.
    for (kind, payload) in [(0x05u8, &b"x"[..]), (0x01, &[0xFFu8, 0xFE][..])] {
        let mut bad = vec![0xF7, 0x01, kind];
        bad.extend_from_slice(&own_id);
        bad.extend_from_slice(payload);
        publish_raw(&mut plain, "tower-ws-hub:r", &bad).await;
    }
    hub.hub.publish("r", Message::text("own")).await.unwrap();
    eventually("both counted", || {
        hub.hub.broker_status().invalid_envelopes >= 2
    })
    .await;
    // The hub's own (valid) message, back from Redis, is not counted with them.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(hub.hub.broker_status().invalid_envelopes, 2);
}

/// Reads everything the hub sends on `stream` (reading is what makes tungstenite answer each
/// ping with a pong), until the connection ends; returns the close code the hub sent, if any.
fn answer_pings(
    mut stream: futures_util::stream::SplitStream<Client>,
) -> tokio::task::JoinHandle<Option<u16>> {
    tokio::spawn(async move {
        let mut closed = None;
        while let Some(Ok(message)) = stream.next().await {
            if let WsMessage::Close(frame) = message {
                closed = frame.map(|frame| u16::from(frame.code));
            }
        }
        closed
    })
}

/// The id of the only hub instance subscribed to `plain`'s Redis, read from its probe
/// channel's name (`tower-ws-hub#probe:{32 hex digits}:{n}`): no secret.
async fn own_instance_id(plain: &mut redis::aio::MultiplexedConnection) -> Vec<u8> {
    let channels: Vec<String> = redis::cmd("PUBSUB")
        .arg("CHANNELS")
        .arg("tower-ws-hub#probe:*")
        .query_async(plain)
        .await
        .unwrap();
    let hex = channels[0].split(':').nth(1).unwrap();
    (0..16)
        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
        .collect()
}

/// Two clients in room "r" of `a`; Redis is put to sleep for 3 s and the first client sends
/// 300 messages. Returns the sleeper, the clients (sender, local member) and how many messages
/// the local member got: some (what the connection read), not all (the rest waits on Redis).
async fn sent_during_a_stall(
    a: &Server,
    redis: &RedisServer,
) -> (tokio::task::JoinHandle<()>, (Client, Client), usize) {
    let mut sender = a.connect("r").await;
    let mut local = a.connect("r").await;
    wait_members(&a.hub, "r", 2).await;
    wait_subscribed(&a.hub, 1).await;
    let sleeper = stall_redis_confirmed(redis, 3).await;
    for i in 0..300 {
        send_text(&mut sender, &i.to_string()).await;
    }
    let read = drain_texts(&mut local).await;
    assert!(!read.is_empty() && read.len() < 300, "{} read", read.len());
    (sleeper, (sender, local), read.len())
}

/// `PUBSUB CHANNELS {default prefix}:*`, sorted: the room channels someone subscribes to.
async fn room_channels(plain: &mut redis::aio::MultiplexedConnection) -> Vec<String> {
    let mut channels: Vec<String> = redis::cmd("PUBSUB")
        .arg("CHANNELS")
        .arg("tower-ws-hub:*")
        .query_async(plain)
        .await
        .unwrap();
    channels.sort();
    channels
}

/// Instance A whose only subscriber connection talks to a Redis 200 ms away (each way), so
/// that every SUBSCRIBE and UNSUBSCRIBE is in flight long enough for a room to change under
/// it; connected.
async fn instance_far_from_redis(redis: &RedisServer, proxy: &LatencyProxy) -> Server {
    let config = subscribing_through(
        redis,
        &proxy.url(),
        Duration::from_millis(200),
        Duration::from_secs(5),
    );
    let a = instance(Hub::builder(), config).await;
    wait_subscribed(&a.hub, 0).await;
    a
}

/// A room whose only member leaves while the SUBSCRIBE for it is in flight (Redis has it, its
/// confirmation is still on the way back) ends up unsubscribed: no channel is left subscribed
/// for a room with no local member.
#[tokio::test]
async fn a_room_emptied_while_its_subscribe_is_in_flight_ends_up_unsubscribed() {
    let redis = RedisServer::start().await;
    let proxy = LatencyProxy::start(redis.addr(), Duration::from_millis(200)).await;
    let a = instance_far_from_redis(&redis, &proxy).await;
    let mut plain = redis.connection().await;
    let channel = "tower-ws-hub:brief";

    let client = a.connect("brief").await;
    eventually_async("Redis has the SUBSCRIBE", || {
        let mut plain = plain.clone();
        async move { numsub(&mut plain, channel).await == 1 }
    })
    .await;
    // The confirmation is still 200 ms away from A.
    assert_eq!(a.hub.broker_status().subscribed_rooms, 0);
    close_client(client).await;
    wait_members(&a.hub, "brief", 0).await;

    wait_subscribed(&a.hub, 0).await;
    eventually_async("A unsubscribed", || {
        let mut plain = plain.clone();
        async move { numsub(&mut plain, channel).await == 0 }
    })
    .await;
    // And it stays that way: nothing was left to reconcile the wrong way later.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(numsub(&mut plain, channel).await, 0);
    assert_eq!(a.hub.broker_status().subscribed_rooms, 0);
}

/// A room emptied and joined again while the UNSUBSCRIBE for it is in flight ends up
/// subscribed (the UNSUBSCRIBE of the leave does not win over the join), and its new member
/// gets what is sent on another instance.
#[tokio::test]
async fn a_room_rejoined_while_its_unsubscribe_is_in_flight_ends_up_subscribed() {
    let redis = RedisServer::start().await;
    let proxy = LatencyProxy::start(redis.addr(), Duration::from_millis(200)).await;
    let a = instance_far_from_redis(&redis, &proxy).await;
    let b = instance(Hub::builder(), config(&redis.url())).await;
    let mut plain = redis.connection().await;
    let channel = "tower-ws-hub:flip";
    let (first, mut cb) = one_client_each(&a, &b, "flip").await;
    assert_eq!(numsub(&mut plain, channel).await, 2);

    close_client(first).await;
    eventually_async("Redis has A's UNSUBSCRIBE", || {
        let mut plain = plain.clone();
        async move { numsub(&mut plain, channel).await == 1 }
    })
    .await;
    // Its confirmation is still 200 ms away from A.
    assert_eq!(a.hub.broker_status().subscribed_rooms, 1);
    let mut second = a.connect("flip").await;
    wait_members(&a.hub, "flip", 1).await;

    eventually_async("A subscribed again", || {
        let mut plain = plain.clone();
        async move { numsub(&mut plain, channel).await == 2 }
    })
    .await;
    send_text(&mut cb, "after the rejoin").await;
    assert_eq!(next_text(&mut second).await, "after the rejoin");
    wait_subscribed(&a.hub, 1).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(numsub(&mut plain, channel).await, 2);
}

/// After a Redis outage an instance subscribes to exactly the rooms that have local members
/// then, over all its subscriber connections: a room joined during the outage is subscribed
/// (and receives), a room whose last member left during it is not.
#[tokio::test]
async fn after_an_outage_exactly_the_rooms_with_members_are_subscribed() {
    let mut redis = RedisServer::start().await;
    let a = instance(
        Hub::builder(),
        config(&redis.url()).subscriber_connections(3),
    )
    .await;
    let _kept = a.connect("kept").await;
    let left = a.connect("left").await;
    wait_subscribed(&a.hub, 2).await;

    redis.kill();
    eventually("A reports the outage", || {
        let status = a.hub.broker_status();
        !status.connected && status.subscribers_connected == 0
    })
    .await;
    close_client(left).await;
    let mut joined = a.connect("joined").await;
    let brief = a.connect("brief").await;
    close_client(brief).await;
    wait_members(&a.hub, "left", 0).await;
    wait_members(&a.hub, "brief", 0).await;
    wait_members(&a.hub, "joined", 1).await;

    redis.restart().await;
    wait_subscribed(&a.hub, 2).await;
    let mut plain = redis.connection().await;
    assert_eq!(
        room_channels(&mut plain).await,
        ["tower-ws-hub:joined", "tower-ws-hub:kept"]
    );
    let b = instance(Hub::builder(), config(&redis.url())).await;
    let mut cb = b.connect("joined").await;
    wait_subscribed(&b.hub, 1).await;
    send_text(&mut cb, "hello").await;
    assert_eq!(next_text(&mut joined).await, "hello");
}

/// More rooms than one SUBSCRIBE names (256 channels) on each of two subscriber connections:
/// all are subscribed, all again after Redis restarts, and all unsubscribed once their
/// members leave together.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundreds_of_rooms_per_subscriber_connection_are_subscribed_resubscribed_and_released() {
    let mut redis = RedisServer::start().await;
    let a = instance(
        Hub::builder(),
        config(&redis.url()).subscriber_connections(2),
    )
    .await;
    let rooms = 700;
    let mut clients = futures_util::future::join_all(
        (0..rooms).map(|i| connect_owned(a.ws_url(&format!("room-{i}")))),
    )
    .await;
    wait_subscribed(&a.hub, rooms).await;
    let mut plain = redis.connection().await;
    assert_eq!(room_channels(&mut plain).await.len(), rooms);
    drop(plain);

    redis.restart().await;
    eventually("A resubscribed every room", || {
        let status = a.hub.broker_status();
        status.connected && status.reconnects >= 2 && status.subscribed_rooms == rooms
    })
    .await;
    let mut plain = redis.connection().await;
    assert_eq!(room_channels(&mut plain).await.len(), rooms);

    let staying = clients.split_off(rooms / 2);
    futures_util::future::join_all(clients.into_iter().map(close_client)).await;
    wait_subscribed(&a.hub, rooms - rooms / 2).await;
    let channels = room_channels(&mut plain).await;
    assert_eq!(channels.len(), rooms - rooms / 2);
    assert!(
        channels
            .iter()
            .all(|c| c["tower-ws-hub:room-".len()..].parse::<usize>().unwrap() >= rooms / 2),
        "a room whose member left is still subscribed"
    );
    drop(staying);
}

/// [`connect`] for a URL it owns, so that many can be connected at once.
async fn connect_owned(url: String) -> Client {
    connect(&url).await
}

/// `Duration::MAX` for the probe interval or timeout (no probe, or no deadline on it: "never",
/// as for the hub's own durations) must not end a subscriber connection's task: it panicked
/// adding the duration to the clock right after subscribing, the connection went with it
/// (Redis dropped its subscriptions), and the hub kept reporting it connected while it never
/// received anything again.
#[tokio::test]
async fn a_probe_interval_or_timeout_of_duration_max_means_never() {
    let redis = RedisServer::start().await;
    let second = Duration::from_secs(1);
    let short = Duration::from_millis(50);
    for (n, (interval, timeout)) in [(short, Duration::MAX), (Duration::MAX, second)]
        .into_iter()
        .enumerate()
    {
        let room = format!("forever-{n}");
        let a = instance(
            Hub::builder(),
            RedisConfig::from_url(&redis.url())
                .unwrap()
                .probe(interval, timeout),
        )
        .await;
        let b = instance(Hub::builder(), config(&redis.url())).await;
        let (mut ca, mut cb) = one_client_each(&a, &b, &room).await;
        // Long enough for a few probes (and their replies) with the short interval.
        tokio::time::sleep(Duration::from_millis(300)).await;
        send_text(&mut cb, "still here").await;
        assert_eq!(
            next_text(&mut ca).await,
            "still here",
            "probe({interval:?}, {timeout:?})"
        );
        let mut plain = redis.connection().await;
        assert_eq!(numsub(&mut plain, &format!("tower-ws-hub:{room}")).await, 2);
        drop((ca, cb));
        a.hub.shutdown().await;
        b.hub.shutdown().await;
    }
}

/// `build_connected(Duration::MAX)`, "wait for Redis however long it takes", waits: it used to
/// panic adding the timeout to the clock before looking at the broker once.
#[tokio::test]
async fn build_connected_with_duration_max_waits_for_redis_without_a_deadline() {
    let mut redis = RedisServer::unused().await;
    let url = redis.url();
    let building = tokio::spawn(async move {
        Hub::builder()
            .redis(config(&url))
            .build_connected(Duration::MAX)
            .await
    });
    // Redis is absent for a while: the build waits (and does not fail).
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!building.is_finished(), "{:?}", building.await);
    redis.restart().await;
    let hub = tokio::time::timeout(PROMPTLY, building)
        .await
        .expect("connects once Redis is up")
        .expect("the build did not panic")
        .expect("connected");
    assert!(hub.broker_status().connected);
    hub.shutdown().await;
}
