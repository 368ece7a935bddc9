//! Slow consumers: a client that stops reading fills its own bounded outbound queue and nothing
//! else. Under the default policy it is disconnected with 1013; under `DropNewest` /
//! `DropOldest` it stays connected and the drops are counted. Either way the other members of
//! the room get every message, in order.
//!
//! The slow client is a raw TCP socket with a tiny receive buffer that completes the handshake
//! and then stops reading, so the server's socket writes block and its queue fills. The
//! application floods the room in bursts, and the healthy members read each burst before the
//! next one: their queues never hold more than a burst, so only the slow one can overflow.

mod support;

use std::time::Duration;

use support::raw::{RawWs, Upgrade, opcode, tcp_with_small_receive_buffer};
use support::slow::{self, assert_increasing, seq_of};
use support::*;
use tower_ws_hub::{Hub, HubStats, Message, SlowConsumerPolicy, close_code};

const ROOM: &str = "flood";
/// Payload size of each flood message.
const PAYLOAD: usize = 4096;
/// Outbound queue bound per connection, in messages (the byte bound is far above).
const QUEUE: usize = 64;
/// Messages per burst: below the queue bound, so readers that keep up never overflow.
const BURST: u64 = 32;
/// Give up if the slow client's queue has not overflowed after this many messages (32 MiB).
const MAX_FLOOD: u64 = 8192;

fn message(seq: u64) -> Message {
    let mut text = format!("{seq:08}");
    text.extend(std::iter::repeat_n('.', PAYLOAD - text.len()));
    Message::text(text)
}

struct Setup {
    server: Server,
    healthy: Vec<Client>,
    /// Taken by [`resume_reading`] while it reads in the background.
    slow: Option<RawWs>,
}

async fn setup(policy: SlowConsumerPolicy) -> Setup {
    let hub = Hub::builder()
        .outbound_queue(QUEUE, 1024 * 1024)
        .slow_consumer_policy(policy)
        // Generous: the slow client reads our close frame only when the test lets it.
        .close_timeout(Duration::from_secs(30))
        .build();
    let server = serve_hub(hub).await;
    let healthy = vec![server.connect(ROOM).await, server.connect(ROOM).await];
    let slow = Upgrade::new(&format!("/ws/{ROOM}"))
        .open_on(tcp_with_small_receive_buffer(server.addr).await)
        .await;
    wait_members(&server.hub, ROOM, 3).await;
    Setup {
        server,
        healthy,
        slow: Some(slow),
    }
}

/// Publishes numbered messages in bursts until `done(stats)` holds (checked after every
/// publish); the healthy clients read and check every message of each burst. Returns how many
/// flood messages were published.
async fn flood_until(setup: &mut Setup, done: impl Fn(&HubStats) -> bool) -> u64 {
    let hub = setup.server.hub.clone();
    let mut next = 0;
    while next < MAX_FLOOD {
        let start = next;
        let mut finished = false;
        while next < start + BURST && !finished {
            let queued = hub.publish(ROOM, message(next)).await.unwrap();
            assert!(
                queued >= 2,
                "the healthy members must always take the message"
            );
            next += 1;
            finished = done(&hub.stats());
        }
        for client in &mut setup.healthy {
            for seq in start..next {
                let text = next_text(client).await;
                assert_eq!(
                    seq_of(text.as_bytes()),
                    seq,
                    "a healthy member missed a message"
                );
            }
        }
        if finished {
            return next;
        }
    }
    panic!("the slow client's queue never overflowed after {MAX_FLOOD} messages");
}

/// Publishes to the room and checks the healthy members get it.
async fn publish_to_all(setup: &mut Setup, seq: u64) {
    setup.server.hub.publish(ROOM, message(seq)).await.unwrap();
    for client in &mut setup.healthy {
        assert_eq!(seq_of(next_text(client).await.as_bytes()), seq);
    }
}

/// Lets the slow client read again: the flood sequence numbers it receives before a marker
/// (published to the whole room) arrives.
async fn resume_reading(setup: &mut Setup) -> Vec<u64> {
    let slow = setup.slow.take().unwrap();
    let (seqs, _markers, slow) =
        slow::resume_reading(slow, async |marker| publish_to_all(setup, marker).await).await;
    setup.slow = Some(slow);
    seqs
}

#[tokio::test]
async fn a_client_that_stops_reading_is_disconnected_with_1013_and_the_others_get_everything() {
    let mut setup = setup(SlowConsumerPolicy::Disconnect).await;
    let published = flood_until(&mut setup, |s| s.slow_consumer_disconnects >= 1).await;

    let stats = setup.server.hub.stats();
    assert_eq!(stats.slow_consumer_disconnects, 1);
    assert!(stats.dropped_messages >= 1);

    // The slow client reads again: what was already handed to its socket, then 1013.
    let slow = setup.slow.as_mut().unwrap();
    let mut received = Vec::new();
    let close = loop {
        let frame = slow.read_frame().await.expect("a close frame before EOF");
        match frame.opcode {
            opcode::TEXT => received.push(seq_of(&frame.payload)),
            opcode::CLOSE => break frame,
            _ => {}
        }
    };
    assert_eq!(close.close_code(), Some(close_code::SLOW_CONSUMER));
    slow.send_close(close_code::SLOW_CONSUMER).await;
    // What it got is the start of the flood, in order; the rest was discarded, not buffered.
    let expected: Vec<u64> = (0..received.len() as u64).collect();
    assert_eq!(received, expected);
    assert!((received.len() as u64) < published);
    // Nothing lost silently: the last flood message overflowed the queue, and each one before
    // it either reached the slow client or is counted as dropped (the overflow, what was still
    // queued, what was taken for the wire and not started).
    let dropped = setup.server.hub.stats().dropped_messages;
    assert_eq!(
        received.len() as u64 + dropped,
        published,
        "received {}, dropped {dropped}, published {published}",
        received.len()
    );

    let hub = setup.server.hub.clone();
    eventually("the slow client is gone", || hub.room_size(ROOM) == 2).await;
    eventually("two connections left", || hub.stats().connections == 2).await;
    // The room carries on for the others.
    for seq in published..published + 10 {
        publish_to_all(&mut setup, seq).await;
    }
    assert_eq!(setup.server.hub.stats().slow_consumer_disconnects, 1);
}

#[tokio::test]
async fn drop_newest_keeps_the_slow_client_connected_and_counts_the_drops() {
    let mut setup = setup(SlowConsumerPolicy::DropNewest).await;
    let published = flood_until(&mut setup, |s| s.dropped_messages >= 1).await;
    let dropped = setup.server.hub.stats().dropped_messages;
    assert!(dropped >= 1);

    let received = resume_reading(&mut setup).await;
    assert_increasing(&received);
    // The oldest messages were kept, the newest (the last of the flood) dropped.
    assert_eq!(received.first(), Some(&0));
    assert!(!received.contains(&(published - 1)));
    assert!((received.len() as u64) < published);

    let stats = setup.server.hub.stats();
    assert_eq!(stats.slow_consumer_disconnects, 0);
    assert_eq!(stats.connections, 3);
    assert_eq!(setup.server.hub.room_size(ROOM), 3);
    // Nothing lost silently: each flood message reached the slow client or was counted by the
    // end of the flood (under DropNewest nothing queued is dropped later; markers published
    // into a still-full queue are dropped and counted after `dropped` was read).
    assert!(stats.dropped_messages >= dropped);
    assert_eq!(
        received.len() as u64 + dropped,
        published,
        "received {}, dropped {dropped}, published {published}",
        received.len()
    );
}

/// The `slow consumers` lines of `logs`, in order, with what each says was suppressed.
fn drop_lines(logs: &std::sync::Mutex<Vec<u8>>) -> Vec<(String, u64)> {
    let logs = String::from_utf8(logs.lock().unwrap().clone()).unwrap();
    logs.lines()
        .filter(|line| line.contains("slow consumers: outbound queues full"))
        .map(|line| {
            let suppressed = line
                .split("similar_events_suppressed=")
                .nth(1)
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|n| n.parse().ok())
                .unwrap_or_else(|| panic!("no suppressed count in {line}"));
            (line.to_owned(), suppressed)
        })
        .collect()
}

/// A client that stays slow makes every publish drop for it: the operator gets one warning a
/// second, and the next one says how many were left out in between.
#[tokio::test]
async fn drops_are_logged_at_most_once_a_second_and_the_next_line_counts_the_rest() {
    let (_guard, logs) = capture_logs(tracing::Level::WARN);
    let mut setup = setup(SlowConsumerPolicy::DropNewest).await;
    let started = std::time::Instant::now();
    flood_until(&mut setup, |s| s.dropped_messages >= 1).await;
    // Twenty more publishes, each dropped for the slow client.
    let first_drops = setup.server.hub.stats().dropped_messages;
    for seq in MAX_FLOOD..MAX_FLOOD + 20 {
        publish_to_all(&mut setup, seq).await;
    }
    let dropped = setup.server.hub.stats().dropped_messages;
    assert!(dropped > first_drops + 10, "{first_drops} then {dropped}");
    let lines = drop_lines(&logs);
    let most = 1 + started.elapsed().as_secs() as usize;
    assert!(
        !lines.is_empty() && lines.len() <= most,
        "{} lines in {:?}: {lines:?}",
        lines.len(),
        started.elapsed()
    );
    assert_eq!(lines[0].1, 0, "the first line suppressed nothing");
    assert!(lines[0].0.contains(ROOM), "{}", lines[0].0);

    // A second later, one more drop: logged, with the publishes left out since the last line.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let before = drop_lines(&logs).len();
    publish_to_all(&mut setup, MAX_FLOOD + 20).await;
    let lines = drop_lines(&logs);
    assert_eq!(lines.len(), before + 1, "{lines:?}");
    let (last, suppressed) = lines.last().unwrap();
    assert!(*suppressed >= 1, "{last}");
    // Each publish dropped for the slow client once: what was suppressed is at most the drops
    // that did not get a line.
    assert!(
        *suppressed <= dropped - before as u64,
        "{suppressed} suppressed, {dropped} dropped in {before} lines: {last}"
    );
    assert!(
        last.contains(&format!("total_dropped={}", dropped + 1)),
        "{last}"
    );
}

#[tokio::test]
async fn drop_oldest_keeps_the_slow_client_connected_and_counts_the_drops() {
    let mut setup = setup(SlowConsumerPolicy::DropOldest).await;
    let published = flood_until(&mut setup, |s| s.dropped_messages >= 1).await;
    assert!(setup.server.hub.stats().dropped_messages >= 1);

    let received = resume_reading(&mut setup).await;
    assert_increasing(&received);
    // The newest message (the last of the flood) was kept; older ones made room for it.
    assert_eq!(received.last(), Some(&(published - 1)));
    assert!((received.len() as u64) < published);

    let stats = setup.server.hub.stats();
    assert_eq!(stats.slow_consumer_disconnects, 0);
    assert_eq!(stats.connections, 3);
    assert_eq!(setup.server.hub.room_size(ROOM), 3);
}

/// CPU time (user + system) this process has used, in clock ticks.
fn cpu_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// A client that stops reading in the middle of a large frame, then misses its pong: the
/// connection must stop sending data, discard its queue and be gone after `close_timeout`.
/// The half-written frame still counts against the queue's bounds until the connection ends;
/// discarding used to take the queue in turns, each turn handing over nothing while that frame
/// held half the bound, so the connection task spun on its worker thread for ever.
///
/// The hub runs on a runtime of its own, in a thread, so that a spinning worker shows up as
/// a missing report instead of hanging the test.
#[test]
fn a_client_stalled_mid_frame_is_dropped_after_its_pong_timeout() {
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let hub = Hub::builder()
                // Half the byte bound (128 KiB) holds less than two 64 KiB frames.
                .outbound_queue(1024, 256 * 1024)
                .slow_consumer_policy(SlowConsumerPolicy::DropNewest)
                .ping_interval(Some(Duration::from_millis(500)))
                .pong_timeout(Duration::from_millis(500))
                .close_timeout(Duration::from_millis(500))
                .build();
            let server = serve_hub(hub.clone()).await;
            // Never reads, never answers pings.
            let _stalled = Upgrade::new("/ws/r")
                .open_on(tcp_with_small_receive_buffer(server.addr).await)
                .await;
            wait_members(&hub, "r", 1).await;
            for i in 0..200u32 {
                let mut payload = vec![b'.'; 64 * 1024];
                payload[..4].copy_from_slice(&i.to_be_bytes());
                hub.publish("r", payload).await.unwrap();
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            tx.send(format!("published; {:?}", hub.stats())).unwrap();
            // Ping at 0.5 s, pong timeout at 1 s, close timeout at 1.5 s: 5 s is plenty.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            while hub.connection_count() > 0 && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let stats = hub.stats();
            tx.send(format!(
                "done: connections {}, pong timeouts {}",
                hub.connection_count(),
                stats.pong_timeouts
            ))
            .unwrap();
        });
    });
    let mut last = String::from("nothing");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(message) if message.starts_with("done") => {
                assert_eq!(message, "done: connections 0, pong timeouts 1");
                return;
            }
            Ok(message) => last = message,
            Err(_) => {
                let before = cpu_ticks();
                std::thread::sleep(Duration::from_secs(1));
                panic!(
                    "the hub's runtime stopped making progress (last report: {last}); CPU \
                     ticks used in the next second: {} (100 = a core spinning)",
                    cpu_ticks() - before
                );
            }
        }
    }
}

/// A client whose ten messages in one write are each answered by the hook with `Reply`, with
/// room for two in its queue.
async fn replies_overflowing(policy: SlowConsumerPolicy) -> (Hub, Server, RawWs) {
    let hub = Hub::builder()
        .outbound_queue(2, 1024 * 1024)
        .slow_consumer_policy(policy)
        .on_message(|_, message| tower_ws_hub::InboundAction::Reply(message))
        .build();
    let server = serve_hub(hub.clone()).await;
    let mut client = Upgrade::new("/ws/r").open(server.addr).await;
    wait_members(&hub, "r", 1).await;
    let mut burst = Vec::new();
    for i in 0..10u8 {
        burst.extend(support::raw::encode_frame(
            true,
            0,
            opcode::TEXT,
            Some(support::raw::MASK),
            format!("m{i}").as_bytes(),
        ));
    }
    client.send_bytes(&burst).await;
    (hub, server, client)
}

#[tokio::test]
async fn a_reply_that_overflows_the_queue_counts_as_a_slow_consumer_disconnect() {
    let (hub, _server, mut client) = replies_overflowing(SlowConsumerPolicy::Disconnect).await;
    assert_eq!(client.close_code().await, Some(close_code::SLOW_CONSUMER));
    let stats = hub.stats();
    assert_eq!(stats.slow_consumer_disconnects, 1, "{stats:?}");
    // The reply that overflowed is a drop too; what comes after is for a closing connection.
    assert!(
        stats.dropped_messages >= 1 && stats.deliveries >= 2,
        "{stats:?}"
    );
}

#[tokio::test]
async fn replies_dropped_by_drop_oldest_are_counted() {
    let (hub, _server, mut client) = replies_overflowing(SlowConsumerPolicy::DropOldest).await;
    // Until every reply is accounted for (a pause in what arrives proves nothing on a busy
    // machine); a reply neither written nor counted would keep this waiting past PROMPTLY.
    let mut received = 0;
    let deadline = tokio::time::Instant::now() + PROMPTLY;
    while received + hub.stats().dropped_messages < 10 {
        let frame = tokio::time::timeout_at(deadline, client.read_frame())
            .await
            .unwrap_or_else(|_| panic!("received {received}; {:?}", hub.stats()))
            .expect("the connection is open");
        if frame.opcode == opcode::TEXT {
            received += 1;
        }
    }
    let stats = hub.stats();
    assert_eq!(stats.messages_received, 10, "{stats:?}");
    assert_eq!(
        received + stats.dropped_messages,
        10,
        "received {received}: every reply is either written or counted as dropped; {stats:?}"
    );
}

/// A message larger than the outbound queue's byte bound says nothing about its receivers (no
/// queue could take it, however fast the client reads): under every policy it is dropped for
/// each receiver and counted, nobody is disconnected, and the next message goes through. The
/// bound counts whole frames: a payload of exactly `max_bytes` does not fit, one that leaves
/// room for the frame header does.
#[tokio::test]
async fn a_message_larger_than_the_byte_bound_is_dropped_without_disconnecting_anyone() {
    for policy in [
        SlowConsumerPolicy::Disconnect,
        SlowConsumerPolicy::DropNewest,
        SlowConsumerPolicy::DropOldest,
    ] {
        let server = serve_hub(
            Hub::builder()
                .outbound_queue(16, 1000)
                .slow_consumer_policy(policy)
                .build(),
        )
        .await;
        let mut first = server.connect("big").await;
        let mut second = server.connect("big").await;
        wait_members(&server.hub, "big", 2).await;
        let hub = &server.hub;
        let delivered = hub.publish("big", Message::binary(vec![7u8; 1000])).await;
        assert_eq!(delivered.unwrap(), 0, "{policy:?}");
        assert_eq!(hub.stats().dropped_messages, 2, "{policy:?}");
        // 996 bytes of payload and a 4-byte header: exactly the bound.
        let fits = hub.publish("big", Message::binary(vec![8u8; 996])).await;
        assert_eq!(fits.unwrap(), 2, "{policy:?}");
        for client in [&mut first, &mut second] {
            assert_eq!(next_binary(client).await, vec![8u8; 996], "{policy:?}");
        }
        let stats = hub.stats();
        assert_eq!(stats.slow_consumer_disconnects, 0, "{policy:?}: {stats:?}");
        assert_eq!(hub.room_size("big"), 2, "{policy:?}");
    }
}
