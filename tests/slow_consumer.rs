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
    assert!(stats.dropped_messages >= dropped);
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
