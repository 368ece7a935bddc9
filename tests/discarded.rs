//! `HubStats::discarded_on_close`: messages queued for a connection that it never wrote because
//! it closed first are counted, whichever way it closed, and a connection that closes with
//! nothing pending counts nothing.
//!
//! A long `write_interval` holds the messages in the connection's queue, so that a known number
//! is still there when the connection closes.

mod support;

use std::time::Duration;

use support::raw::{Upgrade, encode_frame, opcode};
use support::*;
use tower_ws_hub::{Hub, HubStats, Message, close_code};

const ROOM: &str = "leaving";

fn holding_hub() -> Hub {
    Hub::builder()
        .write_interval(Duration::from_secs(60))
        .build()
}

async fn publish(hub: &Hub, text: &str) {
    assert_eq!(hub.publish(ROOM, Message::text(text)).await.unwrap(), 1);
}

/// Two messages right after "first" was written: the interval holds them back.
async fn two_held(hub: &Hub) {
    publish(hub, "held 1").await;
    publish(hub, "held 2").await;
}

async fn stats_once_closed(hub: &Hub) -> HubStats {
    eventually("the connection to end", || hub.stats().connections == 0).await;
    hub.stats()
}

/// A client that read "first", with two more messages held in its queue.
async fn client_with_two_held() -> (Server, Client) {
    let server = serve_hub(holding_hub()).await;
    let mut client = server.connect(ROOM).await;
    wait_members(&server.hub, ROOM, 1).await;
    publish(&server.hub, "first").await;
    assert_eq!(next_text(&mut client).await, "first");
    two_held(&server.hub).await;
    assert_eq!(server.hub.stats().discarded_on_close, 0);
    (server, client)
}

#[tokio::test]
async fn a_client_that_closes_with_messages_queued_has_them_counted() {
    let (server, mut client) = client_with_two_held().await;
    client.close(None).await.unwrap();
    let stats = stats_once_closed(&server.hub).await;
    assert_eq!(stats.deliveries, 3);
    assert_eq!(stats.discarded_on_close, 2);
    assert_eq!(stats.dropped_messages, 0);
}

#[tokio::test]
async fn a_client_that_vanishes_with_messages_queued_has_them_counted() {
    let (server, client) = client_with_two_held().await;
    // No close frame: the TCP connection just ends.
    drop(client);
    let stats = stats_once_closed(&server.hub).await;
    assert_eq!(stats.discarded_on_close, 2);
}

#[tokio::test]
async fn a_client_closed_for_a_protocol_error_has_its_queue_counted() {
    let server = serve_hub(holding_hub()).await;
    let mut raw = Upgrade::new(&format!("/ws/{ROOM}")).open(server.addr).await;
    wait_members(&server.hub, ROOM, 1).await;
    publish(&server.hub, "first").await;
    let first = raw.read_frame().await.expect("the first message");
    assert_eq!(first.payload, b"first");
    two_held(&server.hub).await;

    // Unmasked: clients must mask, so the server closes with 1002 and writes nothing queued.
    raw.send_bytes(&encode_frame(true, 0, opcode::TEXT, None, b"x"))
        .await;
    assert_eq!(raw.close_code().await, Some(close_code::PROTOCOL_ERROR));
    let stats = stats_once_closed(&server.hub).await;
    assert_eq!(stats.protocol_closes, 1);
    assert_eq!(stats.discarded_on_close, 2);
}

#[tokio::test]
async fn nothing_is_counted_when_everything_was_written() {
    let server = serve_hub(Hub::builder().write_interval(Duration::ZERO).build()).await;
    let mut client = server.connect(ROOM).await;
    wait_members(&server.hub, ROOM, 1).await;
    for text in ["one", "two", "three"] {
        publish(&server.hub, text).await;
        assert_eq!(next_text(&mut client).await, text);
    }
    client.close(None).await.unwrap();
    let stats = stats_once_closed(&server.hub).await;
    assert_eq!(stats.deliveries, 3);
    assert_eq!(stats.discarded_on_close, 0);
}

#[tokio::test]
async fn every_message_is_either_read_by_the_client_or_counted() {
    // A client that does not read while 200 × 64 KiB are published: the server's socket fills,
    // and the rest waits on the connection's wire and in its queue. Then the client breaks a
    // rule; the server closes at once, and the client reads what did go out, up to the close
    // frame. Whatever it did not get must be counted, wherever it was waiting.
    const MESSAGES: usize = 200;
    let server = serve_hub(
        Hub::builder()
            .write_interval(Duration::ZERO)
            .outbound_queue(1024, 64 * 1024 * 1024)
            .build(),
    )
    .await;
    let mut raw = Upgrade::new(&format!("/ws/{ROOM}"))
        .open_on(support::raw::tcp_with_small_receive_buffer(server.addr).await)
        .await;
    wait_members(&server.hub, ROOM, 1).await;
    let payload = "x".repeat(64 * 1024);
    for _ in 0..MESSAGES {
        publish(&server.hub, &payload).await;
    }
    raw.send_bytes(&encode_frame(true, 0, opcode::TEXT, None, b"x"))
        .await;
    let mut read = 0;
    let code = loop {
        let frame = raw
            .read_frame()
            .await
            .expect("a close frame before the end");
        match frame.opcode {
            opcode::TEXT => read += 1,
            opcode::CLOSE => break frame.close_code(),
            other => panic!("unexpected opcode {other}"),
        }
    };
    assert_eq!(code, Some(close_code::PROTOCOL_ERROR));
    let stats = stats_once_closed(&server.hub).await;
    assert_eq!(stats.deliveries, MESSAGES as u64);
    assert!(read < MESSAGES, "the test needs messages left behind");
    assert_eq!(
        read as u64 + stats.discarded_on_close,
        MESSAGES as u64,
        "read {read}, counted {}",
        stats.discarded_on_close
    );
}

#[tokio::test]
async fn a_client_that_closes_and_stops_reading_is_dropped_after_the_close_timeout() {
    // Its close frame arrives while the server's socket is full: the answer waits behind a
    // half-written frame the client never reads. Without pings nothing else would ever end the
    // connection; the close timeout must, and what was left counts as discarded.
    let server = serve_hub(
        Hub::builder()
            .write_interval(Duration::ZERO)
            .ping_interval(None)
            .close_timeout(Duration::from_millis(300))
            .outbound_queue(1024, 64 * 1024 * 1024)
            .build(),
    )
    .await;
    let mut raw = Upgrade::new(&format!("/ws/{ROOM}"))
        .open_on(support::raw::tcp_with_small_receive_buffer(server.addr).await)
        .await;
    wait_members(&server.hub, ROOM, 1).await;
    let payload = "x".repeat(64 * 1024);
    for _ in 0..100 {
        publish(&server.hub, &payload).await;
    }
    raw.send_close(close_code::NORMAL).await;
    let stats = stats_once_closed(&server.hub).await;
    assert!(stats.discarded_on_close > 0, "{stats:?}");
    drop(raw);
}
