//! One connection's rules: size limits (1009), invalid UTF-8 (1007), protocol errors (1002),
//! ping/pong and the pong timeout (1008), and the close handshake. Misbehaving clients are raw
//! sockets writing exactly the bytes under test; after each failure a well-behaved pair of
//! clients in another room must keep working and the connection count must be right.

mod support;

use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use support::bystanders::Bystanders;
use support::raw::{MASK, RawWs, Upgrade, encode_frame, opcode};
use support::*;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tower_ws_hub::{Hub, close_code};

/// Opens a raw WebSocket client in `room` (the caller waits for membership as it needs).
async fn open_raw(server: &Server, room: &str) -> RawWs {
    Upgrade::new(&format!("/ws/{room}")).open(server.addr).await
}

/// Sends `bytes` from a raw client in room "bad" and expects a close frame with `code`.
async fn assert_closed_with(hub: Hub, bytes: &[u8], code: u16) {
    let server = serve_hub(hub).await;
    let mut bystanders = Bystanders::join(&server).await;
    let mut raw = open_raw(&server, "bad").await;
    wait_members(&server.hub, "bad", 1).await;

    raw.send_bytes(bytes).await;
    assert_eq!(raw.close_code().await, Some(code));
    bystanders.assert_unharmed(&server).await;
    assert_eq!(server.hub.stats().protocol_closes, 1);
}

// ----- size limits ---------------------------------------------------------------------------

#[tokio::test]
async fn a_message_larger_than_max_message_size_is_closed_with_1009() {
    let server = serve_hub(Hub::builder().max_message_size(1024).build()).await;
    let mut bystanders = Bystanders::join(&server).await;
    let mut big = server.connect("bad").await;
    wait_members(&server.hub, "bad", 1).await;

    big.send(WsMessage::text("x".repeat(2048))).await.unwrap();
    assert_eq!(
        close_code(&mut big).await,
        Some(close_code::MESSAGE_TOO_BIG)
    );
    bystanders.assert_unharmed(&server).await;
    // Nothing of the oversized message reached anyone.
    assert_eq!(server.hub.stats().messages_received, 2);
}

/// A client still sending a message far over the limit when the server closes must see the
/// 1009 close frame and a clean end, not a reset: a socket closed with unread data sends an
/// RST, and a browser then reports 1006 ("abnormal") instead of the code. The server reads
/// and discards the rest, sends its FIN after the close frame, and ends at the client's.
#[tokio::test]
async fn a_client_still_sending_a_message_over_the_limit_gets_1009_and_a_clean_end_not_a_reset() {
    // A close timeout far longer than any wait here: the clean end must not come from it.
    let server = serve_hub(
        Hub::builder()
            .max_message_size(1024)
            .close_timeout(Duration::from_secs(600))
            .build(),
    )
    .await;
    let mut bystanders = Bystanders::join(&server).await;
    let mut big = server.connect("bad").await;
    wait_members(&server.hub, "bad", 1).await;

    // Far more than the socket buffers hold: the client is still writing when the server
    // decides, from the frame header, to close.
    let sent = big.send(WsMessage::binary(vec![7u8; 16 << 20])).await;
    assert!(sent.is_ok(), "the server reset the connection: {sent:?}");
    // The close handshake completes without a reset.
    assert_close_then_clean_end(&mut big, close_code::MESSAGE_TOO_BIG).await;
    // The client closes its end; the server, draining, sees it and lets the connection go.
    drop(big);
    bystanders.assert_unharmed(&server).await;
    assert_eq!(server.hub.stats().protocol_closes, 1);
}

/// After a broken frame, the server closes its side once its close frame is out (the client
/// sees the end of the stream at once, not at `close_timeout`), and lets the connection go as
/// soon as the client closes its own.
#[tokio::test]
async fn after_a_protocol_close_the_server_closes_its_side_and_lets_go_when_the_client_does() {
    let server = serve_hub(
        Hub::builder()
            .close_timeout(Duration::from_secs(600))
            .build(),
    )
    .await;
    let mut bystanders = Bystanders::join(&server).await;
    let mut raw = open_raw(&server, "bad").await;
    wait_members(&server.hub, "bad", 1).await;
    // Reserved bits set: 1002.
    raw.send_bytes(&encode_frame(true, 0b100, opcode::TEXT, Some(MASK), b"x"))
        .await;
    // Reads the close frame, answers it, waits for the server's end of the stream (which
    // `close_timeout` would only bring 600 s later), then closes its own end.
    assert_eq!(raw.close_code().await, Some(close_code::PROTOCOL_ERROR));
    bystanders.assert_unharmed(&server).await;
    assert_eq!(server.hub.stats().protocol_closes, 1);
}

/// A broken frame instead of the answer to a shutdown's 1001, from a client that then neither
/// reads nor closes: the drain is bounded, and the shutdown returns.
#[tokio::test]
async fn a_protocol_error_during_a_shutdown_does_not_hold_the_shutdown() {
    let server = serve_hub(
        Hub::builder()
            .close_timeout(Duration::from_millis(300))
            .shutdown_grace(Duration::from_secs(600))
            .build(),
    )
    .await;
    let mut raw = open_raw(&server, "bad").await;
    wait_members(&server.hub, "bad", 1).await;
    let hub = server.hub.clone();
    let shutdown = tokio::spawn(async move { hub.shutdown().await });
    let close = raw.read_close().await.expect("1001");
    assert_eq!(close.close_code(), Some(close_code::GOING_AWAY));
    raw.send_bytes(&encode_frame(true, 0, opcode::TEXT, None, b"x"))
        .await;
    tokio::time::timeout(PROMPTLY, shutdown)
        .await
        .expect("the shutdown waited on a draining connection")
        .unwrap();
    assert_eq!(server.hub.stats().connections, 0);
    drop(raw);
}

#[tokio::test]
async fn a_client_that_keeps_sending_after_a_protocol_error_is_dropped_at_the_close_timeout() {
    let server = serve_hub(
        Hub::builder()
            .close_timeout(Duration::from_millis(300))
            .build(),
    )
    .await;
    let mut bystanders = Bystanders::join(&server).await;
    let mut raw = open_raw(&server, "bad").await;
    wait_members(&server.hub, "bad", 1).await;

    // An unmasked frame: 1002, and the rest of the stream means nothing. The client never
    // reads and never closes, but keeps sending: the server drains it for `close_timeout`,
    // no longer.
    raw.send_bytes(&encode_frame(true, 0, opcode::TEXT, None, b"x"))
        .await;
    let started = tokio::time::Instant::now();
    while server.hub.stats().connections > 2 && started.elapsed() < Duration::from_secs(5) {
        if !raw.try_send_bytes(&[0x5a; 1024]).await {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    eventually("the connection dropped", || {
        server.hub.stats().connections == 2
    })
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "still connected 5 s after a 300 ms close timeout"
    );
    bystanders.assert_unharmed(&server).await;
    assert_eq!(server.hub.stats().protocol_closes, 1);
}

#[tokio::test]
async fn a_message_at_the_size_limit_is_delivered() {
    let server = serve_hub(Hub::builder().max_message_size(1024).build()).await;
    let mut a = server.connect("edge").await;
    let mut b = server.connect("edge").await;
    wait_members(&server.hub, "edge", 2).await;
    a.send(WsMessage::binary(vec![7u8; 1024])).await.unwrap();
    assert_eq!(next_binary(&mut b).await, vec![7u8; 1024]);
}

#[tokio::test]
async fn a_fragmented_message_larger_than_max_message_size_is_closed_with_1009() {
    // Each fragment is small; together they exceed the limit.
    let mut bytes = encode_frame(false, 0, opcode::TEXT, Some(MASK), &[b'a'; 600]);
    bytes.extend(encode_frame(
        true,
        0,
        opcode::CONTINUATION,
        Some(MASK),
        &[b'b'; 600],
    ));
    assert_closed_with(
        Hub::builder().max_message_size(1024).build(),
        &bytes,
        close_code::MESSAGE_TOO_BIG,
    )
    .await;
}

#[tokio::test]
async fn a_frame_larger_than_max_frame_size_is_closed_with_1009() {
    let bytes = encode_frame(true, 0, opcode::BINARY, Some(MASK), &[0u8; 2048]);
    assert_closed_with(
        Hub::builder().max_frame_size(1024).build(),
        &bytes,
        close_code::MESSAGE_TOO_BIG,
    )
    .await;
}

#[tokio::test]
async fn a_fragmented_message_within_the_limits_is_reassembled() {
    let server = serve_hub(Hub::builder().build()).await;
    let mut listener = server.connect("frag").await;
    let mut raw = open_raw(&server, "frag").await;
    wait_members(&server.hub, "frag", 2).await;
    let mut bytes = encode_frame(false, 0, opcode::TEXT, Some(MASK), b"hel");
    // A ping between fragments is allowed (RFC 6455 §5.4).
    bytes.extend(encode_frame(true, 0, opcode::PING, Some(MASK), b"mid"));
    bytes.extend(encode_frame(
        true,
        0,
        opcode::CONTINUATION,
        Some(MASK),
        b"lo",
    ));
    raw.send_bytes(&bytes).await;
    assert_eq!(next_text(&mut listener).await, "hello");
    let pong = raw.read_frame().await.unwrap();
    assert_eq!(
        (pong.opcode, pong.payload.as_slice()),
        (opcode::PONG, &b"mid"[..])
    );
}

// ----- invalid payloads and protocol errors -------------------------------------------------

#[tokio::test]
async fn a_text_message_with_invalid_utf8_is_closed_with_1007() {
    let bytes = encode_frame(true, 0, opcode::TEXT, Some(MASK), &[b'o', b'k', 0xFF, 0xFE]);
    assert_closed_with(Hub::builder().build(), &bytes, close_code::INVALID_PAYLOAD).await;
}

#[tokio::test]
async fn invalid_utf8_split_across_fragments_is_closed_with_1007() {
    // "é" is C3 A9: end the message after the C3.
    let mut bytes = encode_frame(false, 0, opcode::TEXT, Some(MASK), b"caf");
    bytes.extend(encode_frame(
        true,
        0,
        opcode::CONTINUATION,
        Some(MASK),
        &[0xC3],
    ));
    assert_closed_with(Hub::builder().build(), &bytes, close_code::INVALID_PAYLOAD).await;
}

#[tokio::test]
async fn an_unmasked_client_frame_is_closed_with_1002() {
    let bytes = encode_frame(true, 0, opcode::TEXT, None, b"unmasked");
    assert_closed_with(Hub::builder().build(), &bytes, close_code::PROTOCOL_ERROR).await;
}

#[tokio::test]
async fn a_frame_with_reserved_bits_set_is_closed_with_1002() {
    for rsv in [0b100, 0b010, 0b001] {
        let bytes = encode_frame(true, rsv, opcode::TEXT, Some(MASK), b"rsv");
        assert_closed_with(Hub::builder().build(), &bytes, close_code::PROTOCOL_ERROR).await;
    }
}

#[tokio::test]
async fn an_unknown_data_opcode_is_closed_with_1002() {
    let bytes = encode_frame(true, 0, 0x3, Some(MASK), b"what is this");
    assert_closed_with(Hub::builder().build(), &bytes, close_code::PROTOCOL_ERROR).await;
}

#[tokio::test]
async fn an_unknown_control_opcode_is_closed_with_1002() {
    let bytes = encode_frame(true, 0, 0xB, Some(MASK), b"");
    assert_closed_with(Hub::builder().build(), &bytes, close_code::PROTOCOL_ERROR).await;
}

#[tokio::test]
async fn a_fragmented_ping_is_closed_with_1002() {
    let bytes = encode_frame(false, 0, opcode::PING, Some(MASK), b"half a ping");
    assert_closed_with(Hub::builder().build(), &bytes, close_code::PROTOCOL_ERROR).await;
}

#[tokio::test]
async fn a_control_frame_over_125_bytes_is_closed_with_1002() {
    let bytes = encode_frame(true, 0, opcode::PING, Some(MASK), &[1u8; 126]);
    assert_closed_with(Hub::builder().build(), &bytes, close_code::PROTOCOL_ERROR).await;
}

#[tokio::test]
async fn a_continuation_without_a_start_is_closed_with_1002() {
    let bytes = encode_frame(true, 0, opcode::CONTINUATION, Some(MASK), b"orphan");
    assert_closed_with(Hub::builder().build(), &bytes, close_code::PROTOCOL_ERROR).await;
}

#[tokio::test]
async fn a_new_message_inside_a_fragmented_one_is_closed_with_1002() {
    let mut bytes = encode_frame(false, 0, opcode::TEXT, Some(MASK), b"first");
    bytes.extend(encode_frame(true, 0, opcode::BINARY, Some(MASK), b"second"));
    assert_closed_with(Hub::builder().build(), &bytes, close_code::PROTOCOL_ERROR).await;
}

#[tokio::test]
async fn a_misbehaving_client_that_vanishes_without_answering_our_close_is_cleaned_up() {
    // The raw client breaks a rule, then drops its socket without a close frame.
    let server = serve_hub(Hub::builder().build()).await;
    let mut bystanders = Bystanders::join(&server).await;
    let mut raw = open_raw(&server, "bad").await;
    wait_members(&server.hub, "bad", 1).await;
    raw.send_bytes(&encode_frame(true, 0b100, opcode::TEXT, Some(MASK), b"x"))
        .await;
    let close = raw.read_close().await.expect("a close frame");
    assert_eq!(close.close_code(), Some(close_code::PROTOCOL_ERROR));
    drop(raw);
    bystanders.assert_unharmed(&server).await;
}

// ----- ping / pong ---------------------------------------------------------------------------

#[tokio::test]
async fn a_client_ping_is_answered_with_a_pong_carrying_its_payload() {
    let server = serve_hub(Hub::builder().build()).await;
    let mut client = server.connect("pp").await;
    client
        .send(WsMessage::Ping(Bytes::from_static(b"are you there")))
        .await
        .unwrap();
    let reply = tokio::time::timeout(PROMPTLY, client.next())
        .await
        .expect("no pong in time")
        .unwrap()
        .unwrap();
    assert_eq!(reply, WsMessage::Pong(Bytes::from_static(b"are you there")));
}

/// Pongs are what keeps a client: it outlives several pong timeouts by answering pings (a
/// server that ignored pongs would close it after the first).
#[tokio::test]
async fn the_server_pings_at_the_ping_interval_and_a_client_that_answers_stays() {
    let hub = Hub::builder()
        .ping_interval(Some(Duration::from_millis(200)))
        .pong_timeout(Duration::from_millis(1500))
        .build();
    let server = serve_hub(hub).await;
    let mut client = server.connect("beat").await;
    let mut other = server.connect("beat").await;
    wait_members(&server.hub, "beat", 2).await;
    // `other` reads all along too, so that its pongs go out.
    let (texts, mut received) = tokio::sync::mpsc::unbounded_channel();
    let reader = tokio::spawn(async move {
        while let Some(Ok(message)) = other.next().await {
            if let WsMessage::Text(text) = message {
                let _ = texts.send(text.to_string());
            }
        }
    });

    // tungstenite answers each ping with a pong as the client reads: 20 pings at 200 ms are
    // four seconds, more than two pong timeouts.
    let mut pings = 0;
    while pings < 20 {
        let message = tokio::time::timeout(PROMPTLY, client.next())
            .await
            .expect("no ping in time")
            .expect("stream ended")
            .expect("read error");
        match message {
            WsMessage::Ping(_) => pings += 1,
            other => panic!("expected only pings, got {other:?}"),
        }
    }
    send_text(&mut client, "alive").await;
    let text = tokio::time::timeout(PROMPTLY, received.recv()).await;
    assert_eq!(text.expect("in time").as_deref(), Some("alive"));
    let stats = server.hub.stats();
    assert_eq!(stats.pong_timeouts, 0);
    assert_eq!(stats.connections, 2);
    reader.abort();
}

#[tokio::test]
async fn a_client_that_never_answers_pings_is_closed_with_1008() {
    let hub = Hub::builder()
        .ping_interval(Some(Duration::from_millis(200)))
        .pong_timeout(Duration::from_millis(300))
        .build();
    let server = serve_hub(hub).await;
    let mut bystanders = Bystanders::join(&server).await;
    let mut raw = open_raw(&server, "bad").await;
    wait_members(&server.hub, "bad", 1).await;

    // The raw client reads everything and answers nothing.
    let first = raw.read_frame().await.expect("a ping");
    assert_eq!(first.opcode, opcode::PING);
    let close = raw.read_close().await.expect("a close frame");
    assert_eq!(close.close_code(), Some(close_code::POLICY_VIOLATION));
    raw.send_close(close_code::POLICY_VIOLATION).await;
    raw.wait_eof().await;

    // The bystanders answer pings (their reads flush the pongs) and are kept.
    bystanders.assert_unharmed(&server).await;
    assert_eq!(server.hub.stats().pong_timeouts, 1);
}

#[tokio::test]
async fn no_pings_are_sent_when_the_interval_is_disabled() {
    // `None` overrides an interval set before it: were it ignored, pings would come every
    // 100 ms here and the read below would see one.
    let hub = Hub::builder()
        .ping_interval(Some(Duration::from_millis(100)))
        .ping_interval(None)
        .build();
    let server = serve_hub(hub).await;
    let mut raw = open_raw(&server, "quiet").await;
    wait_members(&server.hub, "quiet", 1).await;
    let read = tokio::time::timeout(Duration::from_millis(500), raw.read_frame()).await;
    assert!(read.is_err(), "expected nothing, got {read:?}");
}

// ----- close handshake ------------------------------------------------------------------------

#[tokio::test]
async fn a_client_close_is_answered_and_the_member_leaves() {
    let server = serve_hub(Hub::builder().build()).await;
    let mut client = server.connect("bye").await;
    wait_members(&server.hub, "bye", 1).await;
    client
        .close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: "done".into(),
        }))
        .await
        .unwrap();
    assert_eq!(close_code(&mut client).await, Some(close_code::NORMAL));
    eventually("the member left", || server.hub.room_size("bye") == 0).await;
    eventually("no connections", || server.hub.stats().connections == 0).await;
}

#[tokio::test]
async fn a_raw_client_close_gets_a_close_frame_back_and_the_socket_ends() {
    let server = serve_hub(Hub::builder().build()).await;
    let mut raw = open_raw(&server, "bye").await;
    wait_members(&server.hub, "bye", 1).await;
    raw.send_close(close_code::NORMAL).await;
    let close = raw.read_close().await.expect("the server's close frame");
    assert_eq!(close.close_code(), Some(close_code::NORMAL));
    assert!(!close.masked, "server frames are never masked");
    raw.wait_eof().await;
    eventually("no connections", || server.hub.stats().connections == 0).await;
}

/// The answer to a client's close frame carries the client's code (`close_code`'s module
/// docs), and a code the RFC forbids on the wire is answered with 1002.
#[tokio::test]
async fn the_answer_to_a_clients_close_carries_its_code() {
    let server = serve_hub(Hub::builder().build()).await;
    for (sent, answered) in [
        (4000, 4000),
        (1000, close_code::NORMAL),
        (1005, close_code::PROTOCOL_ERROR),
    ] {
        let mut raw = Upgrade::new("/ws/bye").open(server.addr).await;
        wait_members(&server.hub, "bye", 1).await;
        raw.send_close(sent).await;
        let answer = raw.read_close().await.expect("an answering close frame");
        assert_eq!(answer.close_code(), Some(answered), "client sent {sent}");
        eventually("the connection gone", || server.hub.room_size("bye") == 0).await;
    }
}
