//! Slow consumers and client bursts: a client that sends many small messages at once has them
//! fanned out as one batch, packed into shared buffers ("runs"). When such a batch does not fit
//! a slow client's queue, it is split and every message meets the slow-consumer policy on its
//! own. These tests check, over real sockets, that each message for the slow client is then
//! either delivered or counted as dropped (never both, never neither), in order, while the
//! healthy member gets everything.
//!
//! The slow client is a raw TCP socket with a tiny receive buffer that stops reading after the
//! handshake (see slow_consumer.rs); the sender is an ordinary client writing bursts in one
//! flush each.

mod support;

use std::time::Duration;

use futures_util::SinkExt;
use support::raw::{RawWs, Upgrade, tcp_with_small_receive_buffer};
use support::slow::{self, assert_increasing, seq_of};
use support::*;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tower_ws_hub::{Hub, HubStats, Message, SlowConsumerPolicy};

const ROOM: &str = "bursts";
/// Payload size: small enough that a burst is packed into runs of several messages.
const PAYLOAD: usize = 1500;
/// Outbound queue bound per connection, in messages (the byte bound is far above).
const QUEUE: usize = 64;
/// Messages per client burst (one flush): below the bound, so the healthy member never
/// overflows.
const BURST: u64 = 40;
/// Give up if the slow client has not overflowed by this many messages (60 MB).
const MAX_FLOOD: u64 = 40_000;

fn text(seq: u64) -> String {
    let mut text = format!("{seq:08}");
    text.extend(std::iter::repeat_n('.', PAYLOAD - text.len()));
    text
}

struct Setup {
    server: Server,
    sender: Client,
    healthy: Client,
    slow: Option<RawWs>,
}

async fn setup(policy: SlowConsumerPolicy) -> Setup {
    let hub = Hub::builder()
        .outbound_queue(QUEUE, 64 * 1024 * 1024)
        .slow_consumer_policy(policy)
        .close_timeout(Duration::from_secs(30))
        .build();
    let server = serve_hub(hub).await;
    let sender = server.connect(ROOM).await;
    let healthy = server.connect(ROOM).await;
    let slow = Upgrade::new(&format!("/ws/{ROOM}"))
        .open_on(tcp_with_small_receive_buffer(server.addr).await)
        .await;
    wait_members(&server.hub, ROOM, 3).await;
    Setup {
        server,
        sender,
        healthy,
        slow: Some(slow),
    }
}

/// The sender writes bursts (one flush each) until `done(stats)` holds after a burst; the
/// healthy member reads and checks every message of each burst. Returns how many messages were
/// sent, once the hub has fanned out every one of them.
async fn flood_until(setup: &mut Setup, done: impl Fn(&HubStats) -> bool) -> u64 {
    let mut next = 0;
    while next < MAX_FLOOD {
        let start = next;
        for seq in start..start + BURST {
            setup.sender.feed(WsMessage::text(text(seq))).await.unwrap();
        }
        setup.sender.flush().await.unwrap();
        next = start + BURST;
        for seq in start..next {
            assert_eq!(
                seq_of(next_text(&mut setup.healthy).await.as_bytes()),
                seq,
                "the healthy member missed a message"
            );
        }
        // The healthy member's copy may be written before the fan-out reached the slow one:
        // wait until the hub has finished with every message sent.
        let hub = setup.server.hub.clone();
        eventually("every message fanned out", || {
            hub.stats().messages_published == next
        })
        .await;
        if done(&hub.stats()) {
            return next;
        }
    }
    panic!("the slow client's queue never overflowed after {MAX_FLOOD} messages");
}

/// Lets the slow client read again: the flood sequence numbers it receives before a marker
/// (published by the application and checked at the healthy member) arrives, and how many
/// markers were published.
async fn resume_reading(setup: &mut Setup) -> (Vec<u64>, u64) {
    let slow = setup.slow.take().unwrap();
    let (seqs, markers, slow) = slow::resume_reading(slow, async |marker| {
        setup
            .server
            .hub
            .publish(ROOM, Message::text(text(marker)))
            .await
            .unwrap();
        assert_eq!(
            seq_of(next_text(&mut setup.healthy).await.as_bytes()),
            marker
        );
    })
    .await;
    setup.slow = Some(slow);
    (seqs, markers)
}

#[tokio::test]
async fn drop_newest_delivers_or_counts_every_message_of_split_bursts() {
    let mut setup = setup(SlowConsumerPolicy::DropNewest).await;
    // Several queues' worth of drops: bursts were split many times.
    let sent = flood_until(&mut setup, |s| s.dropped_messages >= 3 * QUEUE as u64).await;
    let dropped = setup.server.hub.stats().dropped_messages;

    let (received, _markers) = resume_reading(&mut setup).await;
    assert_increasing(&received);
    assert_eq!(received.first(), Some(&0));
    // Under DropNewest nothing already queued is dropped later (markers are dropped instead),
    // so the flood splits exactly into what arrived and what was counted.
    assert_eq!(
        received.len() as u64 + dropped,
        sent,
        "received {} + dropped {dropped} != sent {sent}",
        received.len()
    );
    let stats = setup.server.hub.stats();
    assert_eq!(stats.slow_consumer_disconnects, 0);
    assert_eq!(setup.server.hub.room_size(ROOM), 3);
}

#[tokio::test]
async fn drop_oldest_keeps_the_newest_of_split_bursts_and_counts_the_rest() {
    let mut setup = setup(SlowConsumerPolicy::DropOldest).await;
    let sent = flood_until(&mut setup, |s| s.dropped_messages >= 3 * QUEUE as u64).await;
    let dropped = setup.server.hub.stats().dropped_messages;

    let (received, markers) = resume_reading(&mut setup).await;
    assert_increasing(&received);
    // The newest message of the flood was kept.
    assert_eq!(received.last(), Some(&(sent - 1)));
    // Every flood message arrived or was counted. At the end of the flood the split was exact
    // up to what was still queued; afterwards each marker pushed into a full queue pushed out
    // (and counted) at most one older message.
    let dropped_after = setup.server.hub.stats().dropped_messages;
    let received = received.len() as u64;
    assert!(
        received + dropped <= sent,
        "received {received} + dropped {dropped} > sent {sent}"
    );
    let pushed_out_later = sent - received - dropped;
    assert!(pushed_out_later <= dropped_after - dropped);
    assert!(pushed_out_later <= markers);
    assert_eq!(setup.server.hub.stats().slow_consumer_disconnects, 0);
}
