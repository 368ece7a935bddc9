//! `HubStats::discarded_on_close`: messages queued for a connection that it never wrote because
//! it closed first are counted, whichever way it closed, and a connection that closes with
//! nothing pending counts nothing.
//!
//! A long `write_interval` holds the messages in the connection's queue, so that a known number
//! is still there when the connection closes. The rest of the tests use a client on a socket
//! with a tiny receive buffer that does not read while the server fills its socket, wire and
//! queue; it reads what did go out only after the server decided to close (a truncated last
//! frame, cut by the end of the stream, is not read): for that connection every delivery ends
//! up exactly once as read by the client, in `dropped_messages`, or in `discarded_on_close`,
//! whichever way it closed.

mod support;

use std::time::Duration;

use futures_util::FutureExt;
use support::raw::{RawWs, Upgrade, encode_frame, opcode, tcp_with_small_receive_buffer};
use support::*;
use tower_ws_hub::{Hub, HubStats, Message, SlowConsumerPolicy, close_code};

const ROOM: &str = "leaving";
const BIG: usize = 64 * 1024;

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
    let server = serve_hub(roomy().build()).await;
    let mut raw = stalled_receiver(&server).await;
    publish_big(&server.hub, 200).await;
    raw.send_bytes(&encode_frame(true, 0, opcode::TEXT, None, b"x"))
        .await;
    let (read, close) = read_everything(&mut raw).await;
    assert_eq!(close, Some(Some(close_code::PROTOCOL_ERROR)));
    // The server drains the socket until the client closes its end: it does.
    raw.wait_eof().await;
    let stats = stats_once_closed(&server.hub).await;
    assert_eq!(stats.deliveries, 200);
    assert!(read < 200, "the test needs messages left behind");
    assert_eq!(stats.dropped_messages, 0);
    assert_accounted(read, &stats);
}

#[tokio::test]
async fn a_client_that_closes_and_stops_reading_is_dropped_after_the_close_timeout() {
    // Its close frame arrives while the server's socket is full: the answer waits behind a
    // half-written frame the client never reads. Without pings nothing else would ever end the
    // connection; the close timeout must, and what was left counts as discarded.
    //
    // A control with a close timeout far longer than the default, started first, must still
    // hold its client when the first is gone: the timeout configured is the one that ended it
    // (with the setting ignored, both would end at the default 5 s, the control first).
    let stalled_for = |timeout| async move {
        let server = serve_hub(roomy().ping_interval(None).close_timeout(timeout).build()).await;
        let mut raw = stalled_receiver(&server).await;
        publish_big(&server.hub, 100).await;
        raw.send_close(close_code::NORMAL).await;
        (server, raw)
    };
    let (control, _control_raw) = stalled_for(Duration::from_secs(600)).await;
    let (server, raw) = stalled_for(Duration::from_millis(300)).await;
    let stats = stats_once_closed(&server.hub).await;
    assert!(stats.discarded_on_close > 0, "{stats:?}");
    assert_eq!(
        control.hub.stats().connections,
        1,
        "the control's client is still held"
    );
    drop(raw);
}

/// A queue large enough that nothing overflows it.
fn roomy() -> tower_ws_hub::HubBuilder {
    Hub::builder()
        .write_interval(Duration::ZERO)
        .outbound_queue(1_000_000, 256 * 1024 * 1024)
}

async fn stalled_receiver(server: &Server) -> RawWs {
    let raw = Upgrade::new(&format!("/ws/{ROOM}"))
        .open_on(tcp_with_small_receive_buffer(server.addr).await)
        .await;
    wait_members(&server.hub, ROOM, 1).await;
    raw
}

async fn publish_big(hub: &Hub, n: usize) {
    let payload = "x".repeat(BIG);
    for _ in 0..n {
        assert_eq!(
            hub.publish(ROOM, Message::text(payload.clone()))
                .await
                .unwrap(),
            1
        );
    }
}

/// Reads every frame until the server's close frame or the end of the stream: the number of
/// data frames read, and the close code if a close frame came.
async fn read_everything(raw: &mut RawWs) -> (u64, Option<Option<u16>>) {
    let mut read = 0;
    while let Some(frame) = raw.read_frame().await {
        match frame.opcode {
            opcode::TEXT | opcode::BINARY => read += 1,
            opcode::CLOSE => return (read, Some(frame.close_code())),
            _ => {}
        }
    }
    (read, None)
}

/// Reads everything up to the server's close frame, which must carry `code`, and answers it:
/// the number of data frames read.
async fn read_to_close_and_answer(raw: &mut RawWs, code: u16) -> u64 {
    let (read, close) = read_everything(raw).await;
    assert_eq!(close, Some(Some(code)));
    raw.send_close(code).await;
    read
}

#[track_caller]
fn assert_accounted(read: u64, stats: &HubStats) {
    assert_eq!(
        read + stats.dropped_messages + stats.discarded_on_close,
        stats.deliveries,
        "read {read}, dropped {}, discarded {}, deliveries {}: {stats:?}",
        stats.dropped_messages,
        stats.discarded_on_close,
        stats.deliveries
    );
}

#[tokio::test]
async fn shutdown_grace_expiry_counts_what_a_stalled_client_never_got() {
    let server = serve_hub(
        roomy()
            .shutdown_grace(Duration::from_millis(300))
            .close_timeout(Duration::from_secs(30))
            .build(),
    )
    .await;
    let mut raw = stalled_receiver(&server).await;
    publish_big(&server.hub, 100).await;
    server.hub.shutdown().await;
    let stats = stats_once_closed(&server.hub).await;
    let (read, _) = read_everything(&mut raw).await;
    assert!(read < 100, "the test needs messages left behind");
    assert!(stats.discarded_on_close > 0, "{stats:?}");
    assert_accounted(read, &stats);
}

#[tokio::test]
async fn pong_timeout_then_close_timeout_counts_what_a_stalled_client_never_got() {
    let server = serve_hub(
        roomy()
            .ping_interval(Some(Duration::from_millis(200)))
            .pong_timeout(Duration::from_millis(200))
            .close_timeout(Duration::from_millis(200))
            .build(),
    )
    .await;
    let mut raw = stalled_receiver(&server).await;
    publish_big(&server.hub, 100).await;
    let stats = stats_once_closed(&server.hub).await;
    assert_eq!(stats.pong_timeouts, 1);
    let (read, _) = read_everything(&mut raw).await;
    assert!(read < 100, "the test needs messages left behind");
    assert_accounted(read, &stats);
}

#[tokio::test]
async fn a_stalled_client_that_sends_close_has_the_rest_counted() {
    let server = serve_hub(roomy().build()).await;
    let mut raw = stalled_receiver(&server).await;
    publish_big(&server.hub, 100).await;
    raw.send_close(close_code::NORMAL).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (read, close) = read_everything(&mut raw).await;
    assert_eq!(close, Some(Some(close_code::NORMAL)));
    let stats = stats_once_closed(&server.hub).await;
    assert!(read < 100, "the test needs messages left behind");
    assert_accounted(read, &stats);
}

#[tokio::test]
async fn a_stalled_client_closed_for_a_hook_panic_has_the_rest_counted() {
    let server = serve_hub(
        roomy()
            .on_message(|_, _| panic!("a hook panic (expected by this test)"))
            .build(),
    )
    .await;
    let mut raw = stalled_receiver(&server).await;
    publish_big(&server.hub, 100).await;
    raw.send(opcode::TEXT, b"boom").await;
    let read = read_to_close_and_answer(&mut raw, close_code::INTERNAL_ERROR).await;
    let stats = stats_once_closed(&server.hub).await;
    assert_eq!(stats.hook_panics, 1);
    assert_accounted(read, &stats);
}

#[tokio::test]
async fn a_stalled_client_over_its_rate_limit_has_the_rest_counted() {
    let server = serve_hub(roomy().inbound_rate_limit(0.001, 1).build()).await;
    let mut raw = stalled_receiver(&server).await;
    publish_big(&server.hub, 100).await;
    let mut two = encode_frame(true, 0, opcode::TEXT, Some(support::raw::MASK), b"1");
    two.extend(encode_frame(
        true,
        0,
        opcode::TEXT,
        Some(support::raw::MASK),
        b"2",
    ));
    raw.send_bytes(&two).await;
    let read = read_to_close_and_answer(&mut raw, close_code::POLICY_VIOLATION).await;
    let stats = stats_once_closed(&server.hub).await;
    assert_eq!(stats.rate_limit_closes, 1);
    // The first message went to the room, whose only member is the sender (not echoed).
    assert_accounted(read, &stats);
}

#[tokio::test]
async fn messages_queued_before_an_on_connect_panic_are_counted() {
    let hub_cell: std::sync::Arc<std::sync::OnceLock<Hub>> = Default::default();
    let cell = hub_cell.clone();
    let hub = Hub::builder()
        .on_connect(move |ctx| {
            let hub = cell.get().unwrap();
            for _ in 0..3 {
                let queued = hub
                    .publish(ctx.room(), Message::text("before the panic"))
                    .now_or_never()
                    .expect("an in-process publish does not wait")
                    .unwrap();
                assert_eq!(queued, 1);
            }
            panic!("an on_connect panic (expected by this test)");
        })
        .build();
    hub_cell.set(hub.clone()).unwrap();
    let server = serve_hub(hub).await;
    let mut raw = Upgrade::new(&format!("/ws/{ROOM}")).open(server.addr).await;
    let read = read_to_close_and_answer(&mut raw, close_code::INTERNAL_ERROR).await;
    let stats = stats_once_closed(&server.hub).await;
    assert_eq!(stats.deliveries, 3);
    assert_eq!(stats.discarded_on_close, 3, "{stats:?}");
    assert_accounted(read, &stats);
}

/// Runs of small frames (a client's burst is fanned out as runs), so that the server's socket
/// stops in the middle of a run: half-written runs are cut and counted frame by frame.
#[tokio::test]
async fn half_written_runs_are_counted_frame_by_frame() {
    for round in 0..5 {
        let server = serve_hub(roomy().max_message_size(1 << 20).build()).await;
        let mut raw = stalled_receiver(&server).await;
        let mut sender = server.connect(ROOM).await;
        wait_members(&server.hub, ROOM, 2).await;
        // 40 000 messages of 40..=140 bytes, in bursts the server reads together.
        let mut n = 0u64;
        for burst in 0..200 {
            let mut bytes = Vec::new();
            for i in 0..200 {
                let len = 40 + (burst * 7 + i * 13) % 101;
                bytes.extend(encode_frame(
                    true,
                    0,
                    opcode::TEXT,
                    Some(support::raw::MASK),
                    "y".repeat(len).as_bytes(),
                ));
                n += 1;
            }
            use tokio::io::AsyncWriteExt;
            let stream = sender.get_mut();
            match stream {
                tokio_tungstenite::MaybeTlsStream::Plain(tcp) => {
                    tcp.write_all(&bytes).await.unwrap()
                }
                _ => unreachable!(),
            }
        }
        eventually("every message received", || {
            server.hub.stats().messages_received == n
        })
        .await;
        // An unmasked frame: the server closes at once.
        raw.send_bytes(&encode_frame(true, 0, opcode::TEXT, None, b"x"))
            .await;
        let (read, close) = read_everything(&mut raw).await;
        assert_eq!(
            close,
            Some(Some(close_code::PROTOCOL_ERROR)),
            "round {round}"
        );
        raw.send_close(close_code::PROTOCOL_ERROR).await;
        raw.wait_eof().await;
        drop(sender);
        let stats = stats_once_closed(&server.hub).await;
        assert!(
            read < n,
            "round {round}: the test needs messages left behind"
        );
        assert_accounted(read, &stats);
    }
}

/// A publisher floods the room from another thread while the client closes: pushes that race
/// with the connection's end are either refused or counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_racing_with_the_end_are_refused_or_counted() {
    for round in 0..20 {
        let server = serve_hub(roomy().build()).await;
        let mut raw = Upgrade::new(&format!("/ws/{ROOM}")).open(server.addr).await;
        wait_members(&server.hub, ROOM, 1).await;
        let hub = server.hub.clone();
        let publisher = tokio::spawn(async move {
            let mut queued = 0u64;
            while hub.stats().connections > 0 {
                for _ in 0..50 {
                    queued += hub.publish(ROOM, Message::text("race")).await.unwrap() as u64;
                }
                tokio::task::yield_now().await;
            }
            queued
        });
        let mut read = 0u64;
        while read < 200 + round * 37 {
            let frame = raw.read_frame().await.expect("a frame");
            if frame.opcode == opcode::TEXT {
                read += 1;
            }
        }
        raw.send_close(close_code::NORMAL).await;
        let (more, close) = read_everything(&mut raw).await;
        read += more;
        assert_eq!(close, Some(Some(close_code::NORMAL)));
        let queued = publisher.await.unwrap();
        let stats = server.hub.stats();
        assert_eq!(stats.deliveries, queued);
        assert_accounted(read, &stats);
    }
}

/// A slow-consumer disconnect of a client that never reads again before the server gives up:
/// what it discards is counted in `dropped_messages` and the frame left half-written is never
/// written. Prints where each part went.
#[tokio::test]
async fn slow_consumer_disconnect_then_close_timeout() {
    let server = serve_hub(
        Hub::builder()
            .write_interval(Duration::ZERO)
            .outbound_queue(64, 64 * 1024 * 1024)
            .slow_consumer_policy(SlowConsumerPolicy::Disconnect)
            .close_timeout(Duration::from_millis(300))
            .build(),
    )
    .await;
    let mut raw = stalled_receiver(&server).await;
    let payload = "x".repeat(4096);
    let mut published = 0u64;
    while server.hub.stats().slow_consumer_disconnects == 0 {
        server
            .hub
            .publish(ROOM, Message::text(payload.clone()))
            .await
            .unwrap();
        published += 1;
        assert!(published < 100_000);
        // Let the connection write: its socket must fill before its queue does.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let stats = stats_once_closed(&server.hub).await;
    let (read, _) = read_everything(&mut raw).await;
    eprintln!("published {published}, read {read}, {stats:?}");
    // The message that overflowed was never a delivery; it is counted as dropped.
    assert_eq!(stats.deliveries + 1, published);
    assert_eq!(
        read + stats.dropped_messages + stats.discarded_on_close,
        published,
        "read {read}: {stats:?}"
    );
}

/// Pings every 200 ms, closes (1008) after 200 ms without a pong, and then waits a minute for
/// the client's close frame: a connection that is closing for a while, sending no more data.
fn closing_for_a_pong_timeout(builder: tower_ws_hub::HubBuilder) -> tower_ws_hub::HubBuilder {
    builder
        .ping_interval(Some(Duration::from_millis(200)))
        .pong_timeout(Duration::from_millis(200))
        .close_timeout(Duration::from_secs(60))
}

/// A client of [`closing_for_a_pong_timeout`]'s hub that never answers pings and reads only at
/// the end: returned once the hub has closed it (its close frame is out, unanswered).
async fn closed_for_a_pong_timeout(server: &Server) -> RawWs {
    let raw = Upgrade::new(&format!("/ws/{ROOM}")).open(server.addr).await;
    wait_members(&server.hub, ROOM, 1).await;
    eventually("the pong timeout", || server.hub.stats().pong_timeouts == 1).await;
    raw
}

/// A connection closing for a pong timeout, with a message held back by the write interval,
/// waits for the client's close frame; what the room sends it meanwhile is discarded as it
/// comes (`discarded_on_close`), however long the wait. It must not pile up in the queue until
/// it overflows and counts as a slow-consumer disconnect of a connection already closed for
/// another reason.
#[tokio::test]
async fn a_connection_closing_for_a_pong_timeout_with_a_message_held_is_no_slow_consumer() {
    let server = serve_hub(
        closing_for_a_pong_timeout(
            Hub::builder()
                .write_interval(Duration::from_secs(60))
                .outbound_queue(4, 1024 * 1024)
                .slow_consumer_policy(SlowConsumerPolicy::Disconnect),
        )
        .build(),
    )
    .await;
    // Never answers pings, and reads only at the end.
    let mut raw = Upgrade::new(&format!("/ws/{ROOM}")).open(server.addr).await;
    wait_members(&server.hub, ROOM, 1).await;
    publish(&server.hub, "first").await;
    let first = raw.read_frame().await.expect("\"first\"");
    assert_eq!(first.payload, b"first");
    // Right after a write: held back by the interval.
    publish(&server.hub, "held").await;
    eventually("the pong timeout", || server.hub.stats().pong_timeouts == 1).await;
    // Its close frame is out; the client has not answered. More than a queue's worth arrives,
    // one message at a time.
    for n in 0..8 {
        server
            .hub
            .publish(ROOM, Message::text(format!("late {n}")))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stats = server.hub.stats();
    assert_eq!(stats.slow_consumer_disconnects, 0, "{stats:?}");
    assert_eq!(stats.dropped_messages, 0, "{stats:?}");
    let read = read_to_close_and_answer(&mut raw, close_code::POLICY_VIOLATION).await;
    assert_eq!(read, 0, "only \"first\" was written");
    let stats = stats_once_closed(&server.hub).await;
    assert_eq!(stats.discarded_on_close, 9, "{stats:?}");
    assert_accounted(1, &stats);
}

/// The same, with the messages arriving back to back: more than a queue's worth between two
/// polls of the connection's task (a current-thread runtime cannot run it while this test
/// publishes without yielding). A connection that sends no more data refuses them as they come
/// (counted in `discarded_on_close`) instead of queueing them until the queue overflows.
#[tokio::test]
async fn a_closing_connection_sent_more_than_a_queue_at_once_is_no_slow_consumer() {
    let server = serve_hub(
        closing_for_a_pong_timeout(
            Hub::builder()
                .outbound_queue(4, 1024 * 1024)
                .slow_consumer_policy(SlowConsumerPolicy::Disconnect),
        )
        .build(),
    )
    .await;
    let mut raw = closed_for_a_pong_timeout(&server).await;
    for n in 0..8 {
        let publish = server.hub.publish(ROOM, Message::text(format!("late {n}")));
        // Local delivery happens before the first await: the future is ready at once.
        publish.now_or_never().expect("no broker: ready").unwrap();
    }
    let stats = server.hub.stats();
    assert_eq!(stats.slow_consumer_disconnects, 0, "{stats:?}");
    assert_eq!(stats.dropped_messages, 0, "{stats:?}");
    let read = read_to_close_and_answer(&mut raw, close_code::POLICY_VIOLATION).await;
    assert_eq!(read, 0, "nothing was written");
    let stats = stats_once_closed(&server.hub).await;
    assert_eq!(stats.discarded_on_close, 8, "{stats:?}");
    assert_accounted(0, &stats);
}

/// A message larger than the whole outbound queue could never have been queued for anyone: to
/// a connection that sends no more data (closing for a pong timeout here) it is still dropped
/// as too large, as it is for an open one, not counted as delivered and then discarded by the
/// close (which would make `Hub::publish` report a delivery, and hide the misconfiguration
/// from `dropped_messages`).
#[tokio::test]
async fn a_message_too_large_for_any_queue_is_dropped_not_discarded_by_a_closing_connection() {
    let server =
        serve_hub(closing_for_a_pong_timeout(Hub::builder().outbound_queue(4, 1024)).build()).await;
    let mut raw = closed_for_a_pong_timeout(&server).await;
    let huge = Message::binary(vec![0u8; 4096]);
    let delivered = server.hub.publish(ROOM, huge).await.unwrap();
    assert_eq!(
        delivered, 0,
        "a message no queue can take was counted as delivered"
    );
    // A small one is still delivered and discarded by the close.
    publish(&server.hub, "small").await;
    let stats = server.hub.stats();
    assert_eq!(stats.deliveries, 1, "{stats:?}");
    assert_eq!(stats.dropped_messages, 1, "{stats:?}");
    let read = read_to_close_and_answer(&mut raw, close_code::POLICY_VIOLATION).await;
    assert_eq!(read, 0, "nothing was written");
    let stats = stats_once_closed(&server.hub).await;
    // "small" was delivered and discarded; the one too large was never a delivery (see
    // `HubStats::dropped_messages`), so `assert_accounted` does not apply.
    assert_eq!(
        (
            stats.deliveries,
            stats.discarded_on_close,
            stats.dropped_messages
        ),
        (1, 1, 1),
        "{stats:?}"
    );
}
